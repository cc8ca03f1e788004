"""Download, extraction, synthetic data and preparation, on real and generated data."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mr2unet.data.download import download
from mr2unet.data.extract import extract
from mr2unet.data.mvtec import PAPER_COUNTS, check_counts, scan, validate_layout
from mr2unet.data.prepare import PrepareConfig, prepare, resize_mask, split_samples
from mr2unet.data.prepared import load_split
from mr2unet.data.synthetic import CATEGORIES, generate
from mr2unet.errors import UserError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Server:
    """A 127.0.0.1 HTTP server with Range support and switchable misbehaviour."""

    def __init__(self) -> None:
        self.ranges: list[str | None] = []
        self.cut_after: int | None = None
        self.ignore_range = False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/archive.tar":
                    self.send_error(404)
                    return
                header = self.headers.get("Range")
                server.ranges.append(header)
                start = 0
                if header and not server.ignore_range:
                    start = int(header.removeprefix("bytes=").split("-")[0])
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
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_verifies_the_checksum(server: Server, tmp_path: Path) -> None:
    dest = download(f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, len(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    # A second call reuses the verified file without a request.
    download(f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, len(PAYLOAD))
    assert len(server.ranges) == 1


def test_bad_checksum_deletes_the_file(server: Server, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="SHA-256 .* expected 0{64}.*deleted"):
        download(f"{server.url}/archive.tar", tmp_path / "a.tar", "0" * 64, None)
    assert not (tmp_path / "a.tar").exists()


def test_interrupted_download_resumes_with_range(server: Server, tmp_path: Path) -> None:
    server.cut_after = 300_000
    with pytest.raises(UserError, match="run the stage again to resume"):
        download(f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, len(PAYLOAD))
    assert (tmp_path / "a.tar.part").stat().st_size == 300_000
    server.cut_after = None
    download(f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, len(PAYLOAD))
    assert server.ranges == [None, "bytes=300000-"]
    assert (tmp_path / "a.tar").read_bytes() == PAYLOAD
    assert not (tmp_path / "a.tar.part").exists()


def test_server_ignoring_range_restarts_cleanly(server: Server, tmp_path: Path) -> None:
    (tmp_path / "a.tar.part").write_bytes(PAYLOAD[:1000])
    server.ignore_range = True
    download(f"{server.url}/archive.tar", tmp_path / "a.tar", SHA, len(PAYLOAD))
    assert (tmp_path / "a.tar").read_bytes() == PAYLOAD


def test_404_and_no_network_name_the_url_and_offline_options(server: Server,
                                                             tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"HTTP 404.*data.source: archive.*data.source: dir"):
        download(f"{server.url}/missing.tar", tmp_path / "m.tar", None, None)
    port = server.httpd.server_address[1]
    server.httpd.shutdown()
    server.httpd.server_close()
    url = f"http://127.0.0.1:{port}/archive.tar"
    with pytest.raises(UserError, match=f"cannot reach {url}.*data.archive.*data.directory"):
        download(url, tmp_path / "n.tar", None, None, timeout=2)


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        ok = tarfile.TarInfo("bottle/test/a/000.png")
        ok.size = 1
        tar.addfile(ok, io.BytesIO(b"x"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "bottle/test/../../evil"])
def test_path_traversal_is_refused(tmp_path: Path, name: str) -> None:
    archive = _tar_with(tmp_path, tarfile.TarInfo(name))
    with pytest.raises(UserError, match="refusing member"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_links_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("bottle/test/a/001.png")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(UserError, match="refusing link"):
        extract(_tar_with(tmp_path, link), tmp_path / "out")


def test_real_bottle_sample_extracts_only_what_is_needed(bottle_raw: Path) -> None:
    assert validate_layout(bottle_raw) == ["bottle"]
    samples = scan(bottle_raw, ["bottle"])
    by_type = {t: sum(s.defect_type == t for s in samples) for t in {s.defect_type
                                                                      for s in samples}}
    assert by_type == {"broken_large": 20, "broken_small": 22, "contamination": 21}
    assert (bottle_raw / "bottle" / "license.txt").is_file()
    assert not (bottle_raw / "bottle" / "train").exists()


def test_real_bottle_prepare(bottle_raw: Path, tmp_path: Path) -> None:
    summary = prepare(bottle_raw, tmp_path / "a", PrepareConfig())
    assert summary["per_category"] == {"bottle": {"train": 50, "test": 13}}
    train, test = load_split(tmp_path / "a/train.npz"), load_split(tmp_path / "a/test.npz")
    assert train.images.shape == (50, 128, 128, 3) and train.images.dtype == np.uint8
    assert test.masks.shape == (13, 128, 128)
    assert set(np.unique(train.masks)) == {0, 1}
    assert (train.masks.reshape(50, -1).max(1) == 1).all()
    assert not any("good" in s for s in np.concatenate([train.sources, test.sources]))
    prepare(bottle_raw, tmp_path / "b", PrepareConfig())
    for name in ("manifest.csv", "train.npz", "test.npz", "summary.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_thin_defect_is_kept() -> None:
    line = np.zeros((1024, 1024), np.uint8)
    line[500:502, 100:900] = 255  # 2 px wide: 25 % of a 128-px pixel
    gone, _ = resize_mask(Image.fromarray(line), 128, 0.5, keep_thin=False)
    kept, rescued = resize_mask(Image.fromarray(line), 128, 0.5, keep_thin=True)
    assert gone.sum() == 0 and rescued and 90 <= kept.sum() <= 110


def test_split_is_stratified_and_seeded(synthetic_raw: Path) -> None:
    samples = scan(synthetic_raw, validate_layout(synthetic_raw))
    a = split_samples(samples, 0.2, 7)
    assert a == split_samples(samples, 0.2, 7) and a != split_samples(samples, 0.2, 8)
    for category in {s.category for s in samples}:
        picks = [sp for s, sp in zip(samples, a, strict=True) if s.category == category]
        assert picks.count("test") == 2  # 9 images: floor(9 * 0.2 + 0.5)


def test_count_check_reports_the_difference() -> None:
    check_counts(dict(PAPER_COUNTS))
    with pytest.raises(UserError, match=r"bottle: 60 vs 63 \(-3\)"):
        check_counts({**PAPER_COUNTS, "bottle": 60})


def test_synthetic_is_deterministic_and_valid(synthetic_raw: Path, tmp_path: Path) -> None:
    generate(tmp_path, seed=0, images_per_defect=3)
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png"))
    assert files == sorted(p.relative_to(synthetic_raw) for p in synthetic_raw.rglob("*.png"))
    assert all((tmp_path / f).read_bytes() == (synthetic_raw / f).read_bytes() for f in files)
    assert validate_layout(tmp_path) == sorted(c.name for c in CATEGORIES)
    for sample in scan(tmp_path, validate_layout(tmp_path)):
        mask = np.asarray(Image.open(tmp_path / sample.mask))
        assert set(np.unique(mask)) == {0, 255}
    gray = [c.name for c in CATEGORIES if c.grayscale]
    assert gray and Image.open(next((tmp_path / gray[0] / "test").rglob("*.png"))).mode == "L"


def test_missing_mask_and_corrupt_image_are_named(synthetic_raw: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "raw"
    shutil.copytree(synthetic_raw, root)
    mask = next((root / "weave" / "ground_truth").rglob("*_mask.png"))
    mask.unlink()
    with pytest.raises(UserError, match=f"no mask.*{mask.name}"):
        scan(root, ["weave"])
    shutil.copy(synthetic_raw / mask.relative_to(root), mask)
    image = next((root / "disc" / "test" / "scratch").glob("*.png"))
    image.write_bytes(b"not a png")
    with pytest.raises(UserError, match=f"cannot read image .*{image.name}"):
        prepare(root, tmp_path / "out", PrepareConfig())
