"""Size and cost of the four networks, written into docs/models.md.

    python benchmarks/model_summary.py            # parameters + FLOPs (full size), rewrites docs

The size table: parameters and forward FLOPs of the full-size networks (``base_width``
64, 3 -> 2 channels) for one 3x128x128 image, beside the counts of public reference
implementations.  FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and matrix products; a multiply-add is 2 FLOPs, so MACs = FLOPs / 2;
BN, ReLU, pooling and up-sampling are not counted), with the functions of
``mr2unet.evaluation.cost`` that `evaluate` uses for the report's cost table.

The table is printed and replaced between its markers in docs/models.md.  The CPU timing
table there was measured by ``--timing``, removed after commit 63e852b
(``git show 63e852b:benchmarks/model_summary.py``).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from mr2unet.evaluation.cost import count_parameters, forward_flops
from mr2unet.models import MODEL_NAMES, build_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"
SIZE_MARKERS = ("<!-- model-table:start -->", "<!-- model-table:end -->")

# Parameter counts of public implementations with 3 input and 2 output channels (derived
# from their layer definitions), and why ours differ.  docs/models.md has the details.
REFERENCE = {
    "unet": ("34,527,106 (LeeJunHyun/Image_Segmentation `U_Net`)",
             "same layers; theirs has a bias on every convolution before BN (+6,848)"),
    "resunet": ("13,043,074 (rishikksh20/ResUnet); Zhang et al. report 7.8 M",
                "Zhang's decoder (plain up-sampling) and 1x1 shortcuts; the reference "
                "uses transposed-conv up-sampling and 3x3 shortcuts"),
    "attention_unet": ("34,878,638 (LeeJunHyun/Image_Segmentation `AttU_Net`)",
                       "same layers; biases before BN, as for U-Net (+7,812)"),
    "mr2unet": ("about 7.3 M (MultiResUNet, Ibtehaz & Rahman: 7.26 M)",
                "U-Net's widths 64-1024 instead of 1.67 x 32-512, and a recurrent 3x3 "
                "kernel per unit (6.1 M of ours)"),
}


def size_table(size: int = 128) -> str:
    lines = [f"| model | parameters | reference implementation | why ours differs | "
             f"GFLOPs (forward, 1×3×{size}×{size}) | GMACs |",
             "|---|---:|---|---|---:|---:|"]
    for name in MODEL_NAMES:
        torch.manual_seed(0)
        model = build_model(name)
        params, flops = count_parameters(model), forward_flops(model, size)
        reference, reason = REFERENCE[name]
        lines.append(f"| {name} | {params:,} | {reference} | {reason} | "
                     f"{flops / 1e9:.2f} | {flops / 2e9:.2f} |")
    return "\n".join(lines)


def replace_between(text: str, markers: tuple[str, str], body: str) -> str:
    start, end = markers
    pattern = re.compile(f"{re.escape(start)}.*?{re.escape(end)}", flags=re.S)
    if not pattern.search(text):
        raise SystemExit(f"{DOC} has no {start} ... {end} markers")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    text = DOC.read_text()
    table = size_table()
    print(table)
    text = replace_between(text, SIZE_MARKERS, table)
    if not args.no_write:
        DOC.write_text(text)
        print(f"updated {DOC}")


if __name__ == "__main__":
    main()
