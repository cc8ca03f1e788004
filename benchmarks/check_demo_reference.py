"""The demo's scores against the committed reference (benchmarks/results/demo_reference.json).

    python benchmarks/check_demo_reference.py                   # metrics/ of this checkout
    python benchmarks/check_demo_reference.py --metrics ../a/metrics
    python benchmarks/check_demo_reference.py --update          # write this run as reference

Reads ``metrics/<network>.json`` -> ``mean`` (the per-category mean over the test images,
what `make demo` writes) for every network of the reference and prints one row per network
and score: reference, this run, difference, tolerance. Exits 1 when a score is missing or
differs by more than its tolerance, or when the mean over the networks of a score does.

Why tolerances and not equality: the demo's scores are bit-identical between two runs on
one machine (.ci/run checks that separately) but differ between CPU models by about the
seed spread (docs/training.md, determinism: 0.03-0.05 of mean IOU per network). The
tolerances (in the reference file) cover that spread and still catch a change that moves
every network, or one network by more than a CPU change does. A commit that moves the
scores on purpose updates the reference in the same commit (``--update``), so that a
reviewer sees the new numbers in the diff.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "benchmarks" / "results" / "demo_reference.json"
MEAN_ROW = "mean of networks"


@dataclass(frozen=True)
class Row:
    network: str
    score: str
    reference: float
    found: float | None
    tolerance: float

    @property
    def difference(self) -> float | None:
        return None if self.found is None else self.found - self.reference

    @property
    def ok(self) -> bool:
        # the rounding of the JSON files must not turn a difference at the bound into a fail
        return self.difference is not None and abs(self.difference) <= self.tolerance + 1e-9


def run_scores(metrics: Path, networks: list[str], scores: list[str]
               ) -> dict[str, dict[str, float | None]]:
    """``{network: {score: value or None}}`` from ``metrics/<network>.json`` -> ``mean``."""
    found: dict[str, dict[str, float | None]] = {}
    for network in networks:
        path = metrics / f"{network}.json"
        mean = json.loads(path.read_text()).get("mean", {}) if path.is_file() else {}
        found[network] = {score: mean.get(score) for score in scores}
    return found


def compare(reference: dict[str, Any], found: dict[str, dict[str, float | None]]) -> list[Row]:
    """One row per network and score, then one per score for the mean over the networks."""
    tolerances = reference["tolerance"]
    rows = [Row(network, score, value, found.get(network, {}).get(score),
                tolerances["per_network"][score])
            for network, values in reference["networks"].items()
            for score, value in values.items()]
    for score, tolerance in tolerances["mean_of_networks"].items():
        mine = [r for r in rows if r.score == score]
        complete = all(r.found is not None for r in mine)
        rows.append(Row(MEAN_ROW, score, sum(r.reference for r in mine) / len(mine),
                        sum(r.found for r in mine) / len(mine) if complete else None,  # type: ignore[misc]
                        tolerance))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| network | score | reference | this run | difference | tolerance | |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        found = "missing" if r.found is None else f"{r.found:.4f}"
        diff = "" if r.difference is None else f"{r.difference:+.4f}"
        lines.append(f"| {r.network} | {r.score} | {r.reference:.4f} | {found} | {diff} | "
                     f"±{r.tolerance:g} | {'ok' if r.ok else 'OUT'} |")
    return "\n".join(lines)


def updated(reference: dict[str, Any], found: dict[str, dict[str, float | None]]
            ) -> dict[str, Any]:
    """The reference with this run's values (every score must be present)."""
    missing = [f"{n}.{s}" for n, v in found.items() for s, x in v.items() if x is None]
    if missing:
        raise SystemExit(f"cannot update the reference: missing {', '.join(missing)}")
    return {**reference, "networks": {n: {s: round(float(x), 4) for s, x in v.items()}  # type: ignore[arg-type]
                                      for n, v in found.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", type=Path, default=Path("metrics"),
                        help="the metrics/ folder of a demo run (default: ./metrics)")
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--update", action="store_true",
                        help="write this run's scores into the reference (keeps tolerances)")
    args = parser.parse_args(argv)
    reference = json.loads(args.reference.read_text())
    networks = list(reference["networks"])
    scores = list(reference["tolerance"]["per_network"])
    found = run_scores(args.metrics, networks, scores)
    if args.update:
        args.reference.write_text(json.dumps(updated(reference, found), indent=2) + "\n")
        print(f"wrote {args.reference}")
        return 0
    rows = compare(reference, found)
    print(f"The demo's scores ({args.metrics}) against {args.reference.name}:")
    print(table(rows))
    out = [r for r in rows if not r.ok]
    if out:
        print(f"\n{len(out)} score(s) outside the reference's tolerance. A change that moves "
              "the demo's scores on purpose updates the reference in the same commit: "
              "python benchmarks/check_demo_reference.py --update", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
