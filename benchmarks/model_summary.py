"""Parameter counts and forward FLOPs of the full-size networks at 3x128x128.

    python benchmarks/model_summary.py            # prints the table, rewrites docs/models.md

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add = 2
FLOPs; MACs = FLOPs / 2) for one image. The reference counts are those of popular
public PyTorch implementations with 3 input and 2 output channels.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mr2unet.models import MODEL_NAMES, build_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"
REFERENCE = {"unet": "34.5 M", "resunet": "13.0 M", "attention_unet": "34.9 M",
             "mr2unet": "7.3 M (MultiResUNet)"}
START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"


def summary_table(size: int = 128) -> str:
    lines = ["| model | parameters | reference | GFLOPs (fwd, 1 image) | GMACs |",
             "|---|---:|---:|---:|---:|"]
    for name in MODEL_NAMES:
        model = build_model(name).eval()
        params = sum(p.numel() for p in model.parameters())
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        flops = counter.get_total_flops()
        lines.append(f"| {name} | {params:,} ({params / 1e6:.2f} M) | {REFERENCE[name]} | "
                     f"{flops / 1e9:.2f} | {flops / 2e9:.2f} |")
    return "\n".join(lines)


def main() -> None:
    table = summary_table()
    print(table)
    text = DOC.read_text()
    new = re.sub(f"{re.escape(START)}.*?{re.escape(END)}", f"{START}\n{table}\n{END}", text,
                 flags=re.S)
    DOC.write_text(new)
    print(f"updated {DOC}")


if __name__ == "__main__":
    main()
