"""The DVC plots of ``dvc.yaml`` as a page that works offline (``make plots``).

``dvc plots show`` writes a page whose ``<script>`` tags load Vega, Vega-Lite and Vega-Embed
from a CDN, so without internet it stays blank. This writes a ``--html-template`` for it
whose single script is the bundle of those three libraries that the pinned
``vl-convert-python`` package ships (``vl_convert.javascript_bundle``, which puts
``vegaEmbed`` on ``window`` as the CDN scripts do), and runs ``dvc plots show`` with it.
The template has no ``{scripts}`` placeholder, so DVC's CDN tags are left out.

``python -m mr2unet.reporting.offline_plots [--out build/plots] [dvc plots show args]``
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from mr2unet.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("build/plots")
TEMPLATE_NAME = "offline_template.html"
# dvc_render replaces {plot_divs} with the plots (and {refresh_tag}, {scripts} if present).
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    <title>DVC plots</title>
    <script type="text/javascript">
__VEGA_BUNDLE__
    </script>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def offline_template() -> str:
    """An HTML template for ``dvc plots show --html-template`` with the scripts inline."""
    try:
        import vl_convert  # lazy: a large binary, needed by `make plots` only
    except ImportError:
        raise UserError("vl-convert-python is not installed: run `make install`") from None
    bundle = vl_convert.javascript_bundle()
    if "{plot_divs}" in bundle:  # dvc_render would put the plots inside the script
        raise UserError("the Vega bundle contains the text {plot_divs}: cannot template it")
    return PAGE.replace("__VEGA_BUNDLE__", bundle)


def show(out: Path = DEFAULT_OUT, extra: list[str] | None = None,
         dvc: str | None = None) -> Path:
    """Run ``dvc plots show`` with the offline template into ``out``; the page's path."""
    out.mkdir(parents=True, exist_ok=True)
    template = out / TEMPLATE_NAME
    template.write_text(offline_template(), encoding="utf-8")
    executable = dvc or shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    cmd = [executable, "plots", "show", "--html-template", str(template), "-o", str(out),
           *(extra or [])]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"{' '.join(cmd)} failed:\n{result.stdout}{result.stderr}")
    if result.stderr.strip():  # e.g. plots whose files are missing: say so, go on
        log.warning("%s", result.stderr.strip())
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder of index.html (default {DEFAULT_OUT})")
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        page = show(args.out, extra)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {page} (works offline: the Vega scripts are inside the page)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
