"""Where the project is, also from inside a DVC experiment's temporary workspace.

``dvc exp run --queue`` and ``--temp`` run the pipeline in a copy of the repository under
``<repo>/.dvc/tmp/exps/<tmpdir>`` that DVC deletes afterwards.  Stage outputs belong in
that copy, but some things belong to the project: the MLflow store, a downloaded 5 GB
archive, and paths that the user wrote in ``params.yaml`` relative to the repository (the
bottle-sample profile's ``../shared/...``).  These helpers resolve them to the repository,
and :func:`file_lock` serialises the experiments that share one of them.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Where DVC runs queued and --temp experiments, relative to the repository root.
DVC_EXP_WORKSPACE = (".dvc", "tmp", "exps")


def project_root(path: str | Path = ".") -> Path:
    """``path`` resolved; for a DVC experiment's temporary workspace, the repo it came from."""
    parts = Path(path).resolve().parts
    n = len(DVC_EXP_WORKSPACE)
    for i in range(len(parts) - n, 0, -1):
        if parts[i:i + n] == DVC_EXP_WORKSPACE:
            return Path(*parts[:i])
    return Path(*parts)


def project_path(value: str | Path, cwd: str | Path = ".") -> Path:
    """A path from ``params.yaml``: absolute as given, else relative to the project root.

    Run from the repository root (as every stage is) this is the plain relative path made
    absolute; from a DVC experiment's workspace it points into the repository instead.
    """
    path = Path(value).expanduser()
    return path if path.is_absolute() else project_root(cwd) / path


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    For state that concurrent stages share: two queued experiments writing one SQLite
    store, or downloading one archive.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------ the pipeline's outputs
# Every file a stage writes, relative to the project root, spelled here once (dvc.yaml
# names the same paths; tests/test_one_place.py checks that no module spells them again).

RAW = Path("data") / "raw"  # `download`: the data set in MVTec AD's layout
REPORTS = Path("reports")  # `report`: report.md / report.html, figures, tables
# `promote`: who may hold a registry alias, who may not and why, what it set
PROMOTION = Path("data") / "promotion.json"
METRICS = Path("metrics")  # `evaluate`: one JSON per model (the DVC metrics)
SEED_SPREAD = REPORTS / "seed_spread.md"  # `mr2unet spread`: mean ± std over seeds


@dataclass(frozen=True)
class PreparedFiles:
    """What `prepare` writes into ``folder``: one ``.npz`` per split, the manifest (one row
    per image: category, defect type, split, ``good``) and the summary (counts, sizes,
    ``prepare.mode auto``'s choice)."""

    folder: Path = Path("data") / "prepared"

    @classmethod
    def under(cls, root: str | Path) -> PreparedFiles:
        """The prepared files of the project at ``root``."""
        return cls(Path(root) / cls.folder)

    def split(self, name: str) -> Path:
        """``<folder>/<name>.npz``: ``train``, ``test`` or ``val`` (mr2unet.data.prepare)."""
        return self.folder / f"{name}.npz"

    @property
    def train(self) -> Path:
        return self.split("train")

    @property
    def val(self) -> Path:
        return self.split("val")

    @property
    def test(self) -> Path:
        return self.split("test")

    @property
    def manifest(self) -> Path:
        return self.folder / "manifest.csv"

    @property
    def summary(self) -> Path:
        return self.folder / "summary.json"


PREPARED = PreparedFiles()  # relative to the project root, as the stages run


@dataclass(frozen=True)
class ModelFiles:
    """Where the stages keep one model's files, relative to the project ``root``.

    ``evaluation`` (``metrics/evaluation/<model>.json``) was ``metrics/pooled/<model>.json``
    until the one-place redesign (issue #34): the same content under a name that says what
    it holds, evaluate's whole record of the model beyond the headline scores (the verdict,
    pooled scores, oracle, image-level counts, threshold, cost).
    """

    arch: str
    root: Path = Path(".")

    @property
    def checkpoint(self) -> Path:
        """``train``: the weights and architecture (``data/models/<model>.pt``)."""
        return self.root / "data" / "models" / f"{self.arch}.pt"

    @property
    def run_info(self) -> Path:
        """``train``: the MLflow run and version, training time and device."""
        return self.root / "data" / "models" / f"{self.arch}.run.json"

    @property
    def history(self) -> Path:
        """``train``: one row per epoch (a DVC plot)."""
        return self.root / METRICS / "history" / f"{self.arch}.csv"

    @property
    def metrics(self) -> Path:
        """``evaluate``: mean and per-category scores (a DVC metric)."""
        return self.root / METRICS / f"{self.arch}.json"

    @property
    def evaluation(self) -> Path:
        """``evaluate``: the verdict, pooled scores, oracle, image-level counts, threshold
        and cost (byte-compared by CI, not a DVC metric)."""
        return self.root / METRICS / "evaluation" / f"{self.arch}.json"

    @property
    def timing(self) -> Path:
        """``evaluate``: latencies and training time (measurements, never compared)."""
        return self.root / METRICS / "timing" / f"{self.arch}.json"

    @property
    def per_image(self) -> Path:
        """``evaluate``: one row per test image (TP, FP, FN, IOU, Dice)."""
        return self.root / "data" / "eval" / f"{self.arch}.csv"

    @property
    def predictions(self) -> Path:
        """``evaluate``: the predicted test masks (for the report)."""
        return self.root / "data" / "eval" / f"{self.arch}_pred.npz"

    @property
    def probabilities(self) -> Path:
        """``evaluate``: the 8-bit defect probabilities of the test pixels."""
        return self.root / "data" / "eval" / f"{self.arch}_prob.npz"
