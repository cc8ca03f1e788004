"""Fetching and verifying the MVTec AD archive: streamed, resumable, checksummed."""

from __future__ import annotations

import hashlib
import http.client
import logging
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from mr2unet.errors import UserError

log = logging.getLogger(__name__)
CHUNK = 1 << 20
OFFLINE_HINT = ("Without network, download the archive by hand and set in params.yaml either "
                "`data.source: archive` + `data.archive: /path/to/mvtec_anomaly_detection.tar.xz`"
                ", or `data.source: directory` + `data.directory: /path/to/extracted/mvtec`.")


def sha256_of(path: Path) -> str:
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


def is_verified(path: Path, sha256: str | None, size: int | None) -> bool:
    try:
        verify(path, sha256, size)
    except UserError:
        return False
    return True


def _open(url: str, offset: int, timeout: float):  # noqa: ANN202 - an http response
    headers = {"User-Agent": "mr2unet"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise UserError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}. The "
                        f"vendor's links change over time: set data.url to a current one. "
                        f"{OFFLINE_HINT}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"cannot reach {url} ({reason}). {OFFLINE_HINT}") from None


def download(url: str, dest: Path, sha256: str | None, size: int | None,
             timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify, return ``dest``.

    A file that fails verification is deleted, with a message saying so.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and is_verified(dest, sha256, size):
        log.info("%s already downloaded and verified", dest)
        return dest
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset >= size:
        offset = 0  # a stale or oversized partial file: start over
        part.unlink()
    response = _open(url, offset, timeout)
    with response:
        if offset and response.status != 206:
            log.info("server ignored the range request; downloading from the start")
            offset = 0
        elif offset:
            log.info("resuming %s at byte %d", url, offset)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else size
        with part.open("ab" if offset else "wb") as fh, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True,
                desc=f"download {dest.name}") as bar:
            try:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    fh.write(chunk)
                    bar.update(len(chunk))
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                raise UserError(f"download of {url} interrupted after {fh.tell()} bytes "
                                f"({exc}); run the stage again to resume.") from None
    if size is not None and part.stat().st_size < size:
        raise UserError(f"download of {url} stopped after {part.stat().st_size} of {size} "
                        f"bytes; run the stage again to resume.")
    part.replace(dest)
    try:
        verify(dest, sha256, size)
    except UserError as exc:
        dest.unlink()
        raise UserError(f"{exc} The file was deleted; check data.url / data.sha256 and run "
                        f"the stage again.") from None
    return dest
