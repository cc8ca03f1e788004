"""Fetching and verifying the MVTec AD archive: streamed, resumable, checksummed.

The archive is written to ``<dest>.part`` while it downloads.  A later call sends
``Range: bytes=<size of .part>-`` and appends; a server that ignores the range (status
200) or cannot satisfy it (416) is downloaded again from the start.  Only a complete
file is renamed to ``dest``, and only a verified one is returned: a file that fails the
size or SHA-256 check is deleted, with a message saying so.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from mr2unet.config.workspace import file_lock
from mr2unet.errors import UserError

log = logging.getLogger(__name__)
CHUNK = 1 << 20
OFFLINE_HINT = ("Without network, download the archive by hand and set in params.yaml either "
                "`data.source: archive` + `data.archive: /path/to/mvtec_anomaly_detection.tar.xz`"
                ", or `data.source: directory` + `data.directory: /path/to/extracted/mvtec`.")
RANGE_NOT_SATISFIABLE = 416


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, read in chunks with a progress bar."""
    digest = hashlib.sha256()
    with path.open("rb") as fh, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                    desc=f"sha256 {path.name}", leave=False) as bar:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verify(path: Path, sha256: str | None, size: int | None) -> None:
    """Raise a UserError if ``path`` has the wrong size or SHA-256 (None = not checked)."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise UserError(f"{path} has {actual_size} bytes, expected {size}.")
    if sha256 is not None:
        actual = sha256_of(path)
        if actual != sha256:
            raise UserError(f"{path} has SHA-256 {actual}, expected {sha256}.")


class _RangeNotSatisfiable(Exception):
    """The server refused ``Range`` (HTTP 416): the partial file is stale."""


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Start a GET of ``url`` from byte ``offset``; network problems become UserErrors."""
    headers = {"User-Agent": "mr2unet"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == RANGE_NOT_SATISFIABLE and offset:
            raise _RangeNotSatisfiable from None
        raise UserError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}. The "
                        f"vendor's links change over time: set data.url to a current one. "
                        f"{OFFLINE_HINT}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot reach {url} ({reason}). {OFFLINE_HINT}") from None


def _expected_total(response: http.client.HTTPResponse, offset: int, size: int | None
                    ) -> int | None:
    """Bytes the finished file will have, from Content-Length (else ``size``)."""
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None else size


def _copy(response: http.client.HTTPResponse, fh: BinaryIO, url: str, bar: tqdm) -> None:
    try:
        for chunk in iter(lambda: response.read(CHUNK), b""):
            fh.write(chunk)
            bar.update(len(chunk))
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise UserError(f"download of {url} interrupted after {fh.tell()} bytes ({exc}); "
                        f"run the stage again to resume.") from None


def _fetch(url: str, part: Path, size: int | None, timeout: float) -> None:
    """Append the rest of ``url`` to ``part`` (resuming from its size when it exists)."""
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset == size:
        log.info("%s is complete; verifying it", part)
        return
    if size is not None and offset > size:
        log.info("discarding %s: it is larger than the expected %d bytes", part, size)
        offset = 0
    try:
        response = _open(url, offset, timeout)
    except _RangeNotSatisfiable:
        log.info("the server cannot resume at byte %d; downloading from the start", offset)
        offset = 0
        response = _open(url, offset, timeout)
    with response:
        if offset and response.status != 206:
            log.info("the server ignored the range request; downloading from the start")
            offset = 0
        elif offset:
            log.info("resuming %s at byte %d", url, offset)
        total = _expected_total(response, offset, size)
        if size is not None and total is not None and total != size:
            raise UserError(f"{url} offers {total} bytes, but data.size_bytes is {size}: the "
                            f"URL does not point at the expected archive (perhaps a web "
                            f"page). Set data.url to the archive's download link.")
        with part.open("ab" if offset else "wb") as fh, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True,
                desc=f"download {part.name.removesuffix('.part')}") as bar:
            _copy(response, fh, url, bar)
    received = part.stat().st_size
    if total is not None and received < total:
        raise UserError(f"download of {url} stopped after {received} of {total} bytes; run "
                        f"the stage again to resume.")


def download(url: str, dest: Path, sha256: str | None, size: int | None,
             timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify, return ``dest``.

    A verified ``dest`` is reused without a request. ``timeout`` is the socket timeout
    in seconds. A file that fails verification is deleted, with a message saying so.
    Concurrent calls for one ``dest`` (queued DVC experiments sharing the repository's
    ``data.download_dir``) take turns: the second finds the first's verified file.
    """
    with file_lock(dest.with_name(dest.name + ".lock")):
        return _download(url, dest, sha256, size, timeout)


def _download(url: str, dest: Path, sha256: str | None, size: int | None,
              timeout: float) -> Path:
    if dest.is_file():
        try:
            verify(dest, sha256, size)
        except UserError as exc:
            log.warning("%s Deleting it and downloading again.", exc)
            dest.unlink()
        else:
            log.info("%s already downloaded and verified", dest)
            return dest
    part = dest.with_name(dest.name + ".part")
    _fetch(url, part, size, timeout)
    part.replace(dest)
    try:
        verify(dest, sha256, size)
    except UserError as exc:
        dest.unlink()
        raise UserError(f"{exc} The downloaded file was deleted; check data.url, "
                        f"data.sha256 and data.size_bytes, then run the stage again.") from None
    log.info("downloaded and verified %s", dest)
    return dest
