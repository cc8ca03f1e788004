"""Download against a local HTTP server: checksums, resume, misbehaving servers, no network."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mr2unet.data.download import download, verify
from mr2unet.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """A 127.0.0.1 HTTP server for ``/archive.tar`` with Range support and switchable faults.

    ``cut_after``: send only that many bytes of the body, then drop the connection;
    ``ignore_range``: answer every request with 200 and the whole file.
    Every other path is a 404. ``ranges`` records each request's Range header.
    """

    def __init__(self) -> None:
        self.ranges: list[str | None] = []
        self.cut_after: int | None = None
        self.ignore_range = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if self.path != "/archive.tar":
                    self.send_error(404)
                    return
                header = self.headers.get("Range")
                server.ranges.append(header)
                start = 0
                if header and not server.ignore_range:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                if start >= len(PAYLOAD):
                    self.send_error(416)
                    return
                body = PAYLOAD[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[:server.cut_after])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.stop()


def test_download_verifies_and_reuses(server: Server, tmp_path: Path) -> None:
    dest = download(f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, len(PAYLOAD))
    assert dest == tmp_path / "a.tar" and dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "a.tar.part").exists()
    # A second call reuses the verified file without a request.
    download(f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, len(PAYLOAD))
    assert server.ranges == [None]


def test_bad_checksum_deletes_the_file(server: Server, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"SHA-256 {SHA}, expected 0{{64}}.*was deleted"):
        download(f"{server.url}/archive.tar", tmp_path / "a.tar", "0" * 64, None)
    assert [p.name for p in tmp_path.iterdir()] == ["a.tar.lock"]


def test_concurrent_downloads_of_one_file_take_turns(server: Server, tmp_path: Path) -> None:
    """Two queued experiments sharing data.download_dir: one downloads, one reuses."""
    results: list[Path] = []
    workers = [threading.Thread(target=lambda: results.append(download(
        f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, len(PAYLOAD))))
        for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert results == [tmp_path / "a.tar"] * 2
    assert server.ranges == [None]  # one request, no overlapping writes to a.tar.part
    assert (tmp_path / "a.tar").read_bytes() == PAYLOAD


def test_a_corrupt_earlier_download_is_replaced(server: Server, tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(b"garbage")
    download(f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, len(PAYLOAD))
    assert (tmp_path / "a.tar").read_bytes() == PAYLOAD


def test_interrupted_download_resumes_with_range(server: Server, tmp_path: Path) -> None:
    server.cut_after = 300_000
    with pytest.raises(UserError, match="after 300000 of 1048576 bytes.*run the stage again"):
        download(f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, len(PAYLOAD))
    assert (tmp_path / "a.tar.part").read_bytes() == PAYLOAD[:300_000]
    assert not (tmp_path / "a.tar").exists()
    server.cut_after = None
    download(f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, len(PAYLOAD))
    assert server.ranges == [None, "bytes=300000-"]
    assert (tmp_path / "a.tar").read_bytes() == PAYLOAD
    assert not (tmp_path / "a.tar.part").exists()


def test_interruption_is_detected_without_a_known_size(server: Server, tmp_path: Path) -> None:
    server.cut_after = 1000
    with pytest.raises(UserError, match="after 1000 of 1048576 bytes"):
        download(f"{server.url}/archive.tar", tmp_path / "a.tar", None, None)


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    (tmp_path / "a.tar.part").write_bytes(b"\xff" * 1000)  # wrong bytes: must not be kept
    server.ignore_range = True
    download(f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, len(PAYLOAD))
    assert server.ranges == ["bytes=1000-"]
    assert (tmp_path / "a.tar").read_bytes() == PAYLOAD


def test_unsatisfiable_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    (tmp_path / "a.tar.part").write_bytes(PAYLOAD + b"extra")
    download(f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, None)
    assert server.ranges == [f"bytes={len(PAYLOAD) + 5}-", None]
    assert (tmp_path / "a.tar").read_bytes() == PAYLOAD


def test_complete_part_file_is_verified_without_a_request(server: Server,
                                                          tmp_path: Path) -> None:
    (tmp_path / "a.tar.part").write_bytes(PAYLOAD)
    download(f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, len(PAYLOAD))
    assert server.ranges == [] and (tmp_path / "a.tar").read_bytes() == PAYLOAD


def test_wrong_size_on_offer_fails_before_downloading(server: Server, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="offers 1048576 bytes, but data.size_bytes is 5"):
        download(f"{server.url}/archive.tar", tmp_path / "a.tar", None, 5)
    assert not (tmp_path / "a.tar").exists()


def test_404_names_the_url_and_offline_options(server: Server, tmp_path: Path) -> None:
    url = f"{server.url}/missing.tar"
    with pytest.raises(UserError, match=rf"{url} failed: HTTP 404.*set data.url.*"
                                        r"data.source: archive.*data.source: directory"):
        download(url, tmp_path / "m.tar", None, None)


def test_no_network_names_the_url_and_offline_options(server: Server, tmp_path: Path) -> None:
    url = f"{server.url}/archive.tar"
    server.stop()  # nothing listens on the port any more: connection refused
    with pytest.raises(UserError, match=rf"cannot reach {url} .*data.source: archive.*"
                                        r"data.archive.*data.source: directory.*data.directory"):
        download(url, tmp_path / "n.tar", None, None, timeout=2)
    assert [p.name for p in tmp_path.iterdir()] == ["n.tar.lock"]  # no partial download


def test_verify_checks_size_then_hash(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(PAYLOAD)
    verify(path, SHA, len(PAYLOAD))
    verify(path, None, None)
    with pytest.raises(UserError, match="has 1048576 bytes, expected 7"):
        verify(path, SHA, 7)
    with pytest.raises(UserError, match="expected f{64}"):
        verify(path, "f" * 64, None)
    assert path.is_file()  # a local file that fails is never deleted by verify


def _stage(tmp_path: Path, data: dict) -> subprocess.CompletedProcess:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return subprocess.run([sys.executable, str(REPO / "pipeline" / "download.py"),
                           "--params", "params.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)


def test_stage_without_network_is_one_clear_error(server: Server, tmp_path: Path) -> None:
    url = f"{server.url}/archive.tar"
    server.stop()
    result = _stage(tmp_path, {"source": "url", "url": url, "timeout_s": 2})
    assert result.returncode == 2
    assert f"error: cannot reach {url}" in result.stderr
    assert "data.source: archive" in result.stderr and "data.source: directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_stage_downloads_and_extracts(tmp_path: Path, bottle_tar: Path) -> None:
    """`source: url` with a file:// URL: the same download/verify/extract path, no server."""
    result = _stage(tmp_path, {"source": "url", "url": bottle_tar.as_uri(),
                               "sha256": None, "size_bytes": bottle_tar.stat().st_size,
                               "download_dir": "dl"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dl" / bottle_tar.name).stat().st_size == bottle_tar.stat().st_size
    masks = list((tmp_path / "data/raw/bottle/ground_truth").rglob("*_mask.png"))
    assert len(masks) == 63
