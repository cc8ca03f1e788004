"""The ``mr2unet`` command: small utilities around the pipeline.

``mr2unet profile NAME...``   write profile NAME's values into params.yaml (``make demo``: demo)
``mr2unet synthetic DIR``     write synthetic MVTec-format data to DIR
``mr2unet inspect``           what params.yaml's data set holds: counts, sizes, mask values,
                             defect area, width, contrast; what prepare.mode auto chooses
``mr2unet predict ...``       segment images with a trained model (``mr2unet predict --help``)
``mr2unet export ...``        a trained model as ONNX for C++/C# callers (``mr2unet export --help``)
``mr2unet repro --jobs N``   the DVC pipeline with N networks' stages at a time (``make demo``)
``mr2unet spread``            mean +/- std of the DVC experiments' metrics (e.g. over seeds)
                             beside the paper's, and paired tests of the models
``mr2unet tracking sync``     send the MLflow server what training kept while it was down
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mr2unet import repro
from mr2unet.config import profiles
from mr2unet.config.params import load_params
from mr2unet.config.workspace import RAW, SEED_SPREAD, project_path
from mr2unet.data.extract import extract
from mr2unet.data.inspect import format_report, inspect
from mr2unet.data.layouts import DataLayout, member_filter
from mr2unet.data.synthetic import generate
from mr2unet.deploy import export, predict
from mr2unet.errors import UserError
from mr2unet.tracking.sync import sync_pending


def _profile(args: argparse.Namespace) -> int:
    if not args.name:
        print(f"{args.params}: profile {profiles.applied(Path(args.params))}; "
              f"available: {', '.join(profiles.available())}")
        return 0
    name = profiles.JOIN.join(args.name)
    profiles.apply(name, Path(args.params))
    source = f"profiles/{profiles.BASE}.yaml" + "".join(
        f" + profiles/{n}.yaml" for n in args.name if n != profiles.BASE)
    print(f"{args.params}: the values of profile {name} ({source})")
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    counts = generate(args.out, seed=args.seed, images_per_defect=args.images_per_defect)
    total = sum(counts.values())
    print(f"wrote {total} defective images in {len(counts)} categories to {args.out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    data = params["data"]
    layout = DataLayout.from_params(data)
    with tempfile.TemporaryDirectory(prefix="mr2unet-inspect-") as scratch:
        if args.root:
            root = Path(args.root)
        elif data["source"] == "directory":
            root = project_path(data["directory"])
        elif Path(args.raw).is_dir():
            root = Path(args.raw)  # what `dvc repro download` put there
        elif data["source"] == "archive":
            root = Path(scratch)
            extract(project_path(data["archive"]), root, data["categories"] or None,
                    keep=member_filter(layout), what="image files")
        else:
            raise UserError(f"data.source is {data['source']} and {args.raw} does not exist: "
                            f"run `dvc repro download` first, or give --root DIR.")
        report = inspect(root, layout, data["categories"] or None,
                         params["prepare"]["image_size"], progress=not args.json)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _spread(args: argparse.Namespace) -> int:
    # lazy: it loads scipy.stats (0.6 s), which the other commands do not need
    from mr2unet.tracking.experiments import pairwise_path, write_spread  # lazy: scipy

    found = write_spread(Path(args.repo), Path(args.out))
    if not found:
        raise UserError("no DVC experiments with metrics found (refs/exps): run e.g. "
                        "`dvc exp run --queue -S train.seed=1` and `dvc queue start` first.")
    print(f"{found} experiments -> {args.out}, {pairwise_path(Path(args.out))}")
    return 0


def _tracking_sync(args: argparse.Namespace) -> int:
    results = sync_pending(args.repo)
    for result in results:
        print(result.summary())
    if not results:
        print("nothing to sync: every training run's tracking reached its server")
    return 0


def _repro(args: argparse.Namespace) -> int:
    return repro.run(Path(args.repo), args.jobs, ["--force"] if args.force else [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mr2unet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="write a profile's values (paper, demo, ...) into "
                       "params.yaml (several overlays: merged in order); without NAME, say "
                       "which one it holds")
    p.add_argument("name", nargs="*")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_profile)

    p = sub.add_parser("synthetic", help="generate synthetic MVTec-format data")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images-per-defect", type=int, default=12)
    p.set_defaults(func=_synthetic)

    p = sub.add_parser("inspect", help="what params.yaml's data set holds (any layout), "
                       "before anything is trained: counts, image sizes, mask values, defect "
                       "area share, width and contrast, what prepare.mode auto would choose, "
                       "warnings")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--root", help="the data set's folder (default: data.directory, else "
                   "data/raw, else data.archive extracted to a temporary folder)")
    p.add_argument("--raw", default=str(RAW), help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("repro", help="dvc repro with several networks' train and evaluate "
                       "stages at a time (separate dvc processes; results as dvc repro's)")
    p.add_argument("--jobs", "-j", type=int, default=2,
                   help="networks at a time (default 2); give each its share of the CPU "
                        "cores with run.cpu_threads")
    p.add_argument("--force", "-f", action="store_true",
                   help="run every stage even if nothing changed (dvc repro --force)")
    p.add_argument("--repo", default=".")
    p.set_defaults(func=_repro)

    p = sub.add_parser("spread", help="aggregate DVC experiments into mean +/- std and "
                       "paired tests on seed-averaged per-image scores")
    p.add_argument("--repo", default=".")
    p.add_argument("--out", default=str(SEED_SPREAD))
    p.set_defaults(func=_spread)

    p = sub.add_parser("tracking", help="the MLflow side of the pipeline")
    tracking = p.add_subparsers(dest="tracking_command", required=True)
    p = tracking.add_parser("sync", help="send a tracking server the metrics, params, tags, "
                            "models and registry entries that training kept while it was "
                            "down (data/tracking/pending/); idempotent")
    p.add_argument("--repo", default=".")
    p.set_defaults(func=_tracking_sync)

    predict.add_parser(sub)
    export.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
