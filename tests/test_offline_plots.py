"""``make plots``: the plots dvc.yaml declares, as a page a browser draws without network.

The page is checked in a headless Chromium inside a network namespace of its own (no
network at all); the test skips, saying so, where no Chromium is installed
(``apt-get install chromium``) or no network namespace can be made.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mr2unet.models import MODEL_NAMES
from mr2unet.reporting.offline_plots import show

pytestmark = pytest.mark.slow

pytest.importorskip("vl_convert")

REPO = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))
CATEGORIES = ("bottle", "grid")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DVC project with this repository's plot definitions and files they read."""
    root = tmp_path_factory.mktemp("plots")
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": declared}))
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=root, check=True)
    for n, model in enumerate(MODEL_NAMES):
        history = root / "metrics/history" / f"{model}.csv"
        history.parent.mkdir(parents=True, exist_ok=True)
        history.write_text("epoch,loss,train_iou\n" + "".join(
            f"{e},{1 / (e + n):.4f},{e / (10 + n):.4f}\n" for e in range(1, 6)))
        scores = root / "reports/category_scores" / f"{model}.csv"
        scores.parent.mkdir(parents=True, exist_ok=True)
        scores.write_text("category,iou,dice\n" + "".join(
            f"{c},{0.1 * (n + k + 1):.2f},{0.15 * (n + k + 1):.2f}\n"
            for k, c in enumerate(CATEGORIES)))
    return root


def test_the_page_carries_its_scripts(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    page = show(Path("out"), dvc=DVC)
    html = page.read_text()
    declared = [next(iter(p)) for p in yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]]
    assert html.count("vegaEmbed('#") == len(declared) == 4
    assert re.findall(r"<script[^>]*\ssrc=", html) == []  # nothing loaded from anywhere
    assert "cdn.jsdelivr" not in html
    for name in declared:
        assert f'id = "{name}"' in html, name


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("no headless browser (chromium) installed: apt-get install chromium")


def rendered_dom(page: Path, tmp_path: Path) -> str:
    """The DOM of ``page`` after its scripts ran, in Chromium without any network."""
    browser = chromium()
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare --net): the offline "
                    "check needs one to be sure that nothing is fetched")
    result = subprocess.run(
        ["unshare", "--net", browser, "--headless", "--no-sandbox", "--disable-gpu",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
         "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_a_browser_without_network_draws_every_plot(project: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    dom = rendered_dom(show(Path("offline"), dvc=DVC), tmp_path)
    # vega-embed draws each chart on a canvas of class "marks" inside div.vega-embed
    assert dom.count('class="marks"') == 4, dom[-3000:]
    assert dom.count("vega-embed") >= 4
    # The control: DVC's own page (Vega from a CDN) stays blank in the same browser.
    subprocess.run([DVC, "plots", "show", "-o", "default"], cwd=project, check=True,
                   capture_output=True)
    assert 'class="marks"' not in rendered_dom(project / "default/index.html", tmp_path)
