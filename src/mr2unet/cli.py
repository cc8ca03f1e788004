"""The ``mr2unet`` command: small utilities around the pipeline.

``mr2unet profile NAME``      select a params.yaml profile (``make demo`` uses ``demo``)
``mr2unet synthetic DIR``     write synthetic MVTec-format data to DIR
``mr2unet predict ...``       segment images with a trained model (``mr2unet predict --help``)
``mr2unet spread``            mean +/- std of the DVC experiments' metrics (e.g. over seeds)
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mr2unet.errors import UserError


def _profile(args: argparse.Namespace) -> int:
    from mr2unet.params import set_profile

    set_profile(args.params, args.name)
    print(f"{args.params}: profile: {args.name}")
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from mr2unet.data.synthetic import generate

    counts = generate(args.out, seed=args.seed, images_per_defect=args.images_per_defect)
    total = sum(counts.values())
    print(f"wrote {total} defective images in {len(counts)} categories to {args.out}")
    return 0


def _spread(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mr2unet.tracking.experiments import write_spread

    found = write_spread(Path(args.repo), Path(args.out))
    if not found:
        raise UserError("no DVC experiments with metrics found (refs/exps): run e.g. "
                        "`dvc exp run --queue -S train.seed=1` and `dvc queue start` first.")
    print(f"{found} experiments -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mr2unet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="select the params.yaml profile (paper, demo, ...)")
    p.add_argument("name")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_profile)

    p = sub.add_parser("synthetic", help="generate synthetic MVTec-format data")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images-per-defect", type=int, default=12)
    p.set_defaults(func=_synthetic)

    p = sub.add_parser("spread", help="aggregate DVC experiments into mean +/- std")
    p.add_argument("--repo", default=".")
    p.add_argument("--out", default="reports/seed_spread.md")
    p.set_defaults(func=_spread)

    from mr2unet.deploy import predict

    predict.add_parser(sub)
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
