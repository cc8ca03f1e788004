"""Named sets of parameters: ``profiles/<name>.yaml`` written into ``params.yaml``.

DVC's convention is that ``params.yaml`` holds the values that ran: ``dvc params diff``,
``dvc exp show`` and ``dvc exp run -S train.lr=...`` all read and write it.  So a profile
is not resolved at run time; ``mr2unet profile NAME`` writes its effective values into
``params.yaml`` once:

- ``profiles/paper.yaml`` is the complete parameter file of the paper's protocol, with
  its comments.  The committed ``params.yaml`` is exactly this file, so
  ``git checkout params.yaml`` returns to the paper's protocol.
- every other ``profiles/<name>.yaml`` is an overlay: only the keys that differ from the
  paper's values.  ``params.yaml = paper.yaml`` with the overlay merged in key by key,
  keeping the base file's comments and key order (ruamel.yaml round trip).

Overlays combine: ``mr2unet profile user-data neu-sample`` (the name ``user-data+neu-sample``)
merges them in that order, a later one's values winning, so a recipe and a data set live
in separate files.

The first line of ``params.yaml`` records which profile it came from, as a comment
(``# profile: demo ...``): no stage depends on it, so switching profiles re-runs only the
stages whose values changed.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mr2unet.config.params import check_known_keys, merge_into, read_mapping, validate
from mr2unet.errors import UserError

if TYPE_CHECKING:
    from ruamel.yaml import YAML

PROFILES_DIR = Path("profiles")
BASE = "paper"
NOTE = re.compile(r"^# profile: (?P<name>[A-Za-z0-9_.+-]+)")
JOIN = "+"  # user-data+neu-sample: overlays merged in this order


def _yaml() -> YAML:
    """A round-trip YAML that writes the way params.yaml is written (2-space maps, null).

    ruamel.yaml is imported here, not with the module: code that imports this module
    without writing a profile (tests/helpers.py on the GPU machine) does not need it.
    """
    from ruamel.yaml import YAML

    rt = YAML()
    rt.width = 4096
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return rt


def available(root: Path = Path(".")) -> list[str]:
    """The names of the profiles in ``<root>/profiles/``."""
    return sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))


def profile_file(name: str, root: Path = Path(".")) -> Path:
    """``profiles/<name>.yaml``; a UserError listing the profiles when it does not exist."""
    path = root / PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"unknown profile {name!r}: there is no {path}. "
                        f"Profiles: {', '.join(available(root)) or 'none'}.")
    return path


def read_overlay(path: Path) -> dict[str, Any]:
    """An overlay's values, every key checked against the known keys (a typo is named)."""
    values = read_mapping(path)
    check_known_keys(values, where=str(path))
    return values


def _trailing(mapping: Any) -> tuple[Any, Any]:
    """The (mapping, key) whose end-of-line comment closes ``mapping``'s text: its last
    key's, or, when that holds a mapping, the last key's of that one, and so on."""
    key = next(reversed(mapping))
    value = mapping[key]
    return _trailing(value) if isinstance(value, dict) and value else (mapping, key)


def _append(mapping: Any, key: str, value: Any) -> None:
    """Add ``key`` after a round-trip mapping's last key, moving the comment lines that
    followed the mapping (ruamel keeps them on its last key: they introduce whatever comes
    next in the file) below the new key, where they belong."""
    closing = _trailing(mapping) if mapping else None
    mapping[key] = value
    if closing is None:
        return
    holder, last = closing
    entry = holder.ca.items.get(last)
    token = entry[2] if entry and len(entry) > 2 else None
    if token is None:
        return
    line_end, newline, after = token.value.partition("\n")
    if not after.strip():
        return
    token.value = line_end + newline
    mapping.ca.items[key] = [None, None, type(token)(newline + after, token.start_mark, None),
                             None]


def render(name: str, root: Path = Path(".")) -> str:
    """The text of ``params.yaml`` for profile ``name`` (the paper's file + the overlay,
    or the overlays of ``a+b`` in that order)."""
    base_text = profile_file(BASE, root).read_text()
    if name == BASE:
        return base_text
    names = name.split(JOIN)
    if BASE in names:
        raise UserError(f"profile {name!r}: {BASE} is the base of every profile; name only "
                        f"the overlays (e.g. `mr2unet profile user-data neu-sample`).")
    paths = [profile_file(n, root) for n in names]
    rt = _yaml()
    values = rt.load(base_text)
    for path in paths:
        read_overlay(path)  # checks every key first
        # round trip: 3.0e-3 stays 3.0e-3
        merge_into(values, rt.load(path.read_text()) or {}, add=_append)
    out = io.StringIO()
    rt.dump(values, out)
    text = out.getvalue()
    files = ", ".join(f"profiles/{n}.yaml" for n in names)
    note = (f"# profile: {name} (written by `mr2unet profile {' '.join(names)}`: "
            f"profiles/{BASE}.yaml with {files} merged in)")
    first, _, rest = text.partition("\n")
    return (f"{note}\n{rest}" if NOTE.match(first) else f"{note}\n{text}")


def applied(params_path: Path = Path("params.yaml")) -> str:
    """The profile noted on the first line of ``params.yaml``; ``custom`` when none is."""
    if not params_path.is_file():
        return "custom"
    match = NOTE.match(params_path.read_text().partition("\n")[0])
    return match["name"] if match else "custom"


def apply(name: str, params_path: Path = Path("params.yaml"), root: Path = Path(".")) -> str:
    """Write profile ``name``'s effective values into ``params_path``; return the text.

    The result is validated before anything is written, so a profile that cannot run
    (a typo, an archive that is not there) leaves ``params.yaml`` as it was.
    """
    text = render(name, root)
    values = yaml.safe_load(text)
    where = f"profiles/{name}.yaml" if name == BASE else ", ".join(
        f"profiles/{n}.yaml" for n in name.split(JOIN)) + f" over profiles/{BASE}.yaml"
    check_known_keys(values, where=where)
    try:
        validate(values)
    except UserError as exc:
        raise UserError(f"{where}: {exc} Nothing was written to {params_path}.") from None
    params_path.write_text(text)
    return text
