"""Reading ``params.yaml``: the values that run, validated.

Every stage calls :func:`load_params` so that a bad value fails before any work,
with one message that names the offending key.  ``params.yaml`` holds the effective
values (DVC's convention); named sets of values live in ``profiles/`` and are written
into it by ``mr2unet profile NAME`` (:mod:`mr2unet.config.profiles`).
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import yaml

from mr2unet.config.workspace import project_path
from mr2unet.errors import UserError

SOURCES = ("synthetic", "url", "archive", "directory")
# `run.adam_impl` (mr2unet.training.setup.make_optimizer)
ADAM_IMPLS = ("auto", "foreach", "fused")
# train.lr_schedule (mr2unet.training.config.epoch_lr implements each)
LR_SCHEDULES = ("constant", "cosine")
# `train.loss`: a pixel term, a region term, or `<pixel>_<region>` (mr2unet.training.losses).
PIXEL_LOSSES = ("ce", "weighted_ce", "focal")
REGION_LOSSES = ("dice", "tversky")
LOSSES = (*PIXEL_LOSSES, *REGION_LOSSES,
          *(f"{p}_{r}" for p in PIXEL_LOSSES for r in REGION_LOSSES))
# The keys each section may hold; a key outside these (a typo such as `train.epoch`, in
# params.yaml or in a profile) would otherwise be ignored without a word.
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "data": ("source", "url", "sha256", "size_bytes", "archive", "directory", "categories",
             "check_counts", "download_dir", "timeout_s", "layout", "folder", "yolo", "coco",
             "labelme"),
    "synthetic": ("seed", "images_per_defect", "good_images"),
    "split": ("test_fraction", "seed", "val_fraction"),
    "prepare": ("image_size", "mask_threshold", "keep_thin_defects", "resize", "good_images",
                "mode", "tile_source_size", "tile_stride", "tile_predict",
                "defect_crop_fraction"),
    "train": ("models", "epochs", "steps", "batch_size", "lr", "lr_schedule", "weight_decay",
              "loss", "dice_weight", "class_weights", "focal_gamma", "tversky_alpha",
              "tversky_beta", "augment", "seed", "base_width", "model_options"),
    # how the runs execute (mr2unet.training.options.RunOptions): not DVC dependencies
    "run": ("device", "precision", "channels_last", "cpu_threads", "compile", "adam_impl",
            "cuda_graphs", "deterministic", "checkpoint_every", "log_every"),
    "evaluate": ("batch_size", "empty_score", "report_samples", "image_score",
                 "min_defect_area", "fit_for_use", "threshold"),
    "tracking": ("enabled", "uri", "experiment", "registry_prefix", "champion_alias",
                 "challenger_alias"),
}
TOP_LEVEL = tuple(KNOWN_KEYS)
# Keys of an older params.yaml: where each went (issue #34). The removed speed levers'
# committed values are now what always runs; benchmarks set them on RunOptions.
MOVED_KEYS = {f"train.{key}": f"run.{key}" for key in KNOWN_KEYS["run"]}
REMOVED_KEYS = ("train.fused_convs", "train.narrow_norms_nchw", "train.onednn_1x1_convs")
LAYOUTS = ("mvtec", "folder", "visa", "yolo", "coco", "labelme")
# `data.folder` (data.layout: folder; mr2unet.data.folder)
FOLDER_KEYS = ("category", "images", "masks", "mask_suffix", "good", "split_lists")
# the label layouts' keys (mr2unet.data.yolo, .coco, .labelme): (required, optional)
LABEL_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "yolo": (("dataset",), ("category",)),
    "coco": (("annotations",), ("images", "category")),
    "labelme": (("annotations",), ("category",)),
}


def merge_into(target: MutableMapping[str, Any], overlay: MutableMapping[str, Any],
               add: Callable[[MutableMapping[str, Any], str, Any], None] | None = None
               ) -> None:
    """Set ``overlay``'s values in ``target`` in place; nested mappings merge key by key.

    In-place assignment keeps a round-trip (ruamel) ``target``'s comments and key order.
    ``add(mapping, key, value)``, when given, sets the keys a mapping does not have yet.
    """
    for key, value in overlay.items():
        if isinstance(value, MutableMapping) and isinstance(target.get(key), MutableMapping):
            merge_into(target[key], value, add)
        elif add is not None and key not in target:
            add(target, key, value)
        else:
            target[key] = value


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of ``base`` with ``override`` merged in (:func:`merge_into`)."""
    merged = copy.deepcopy(base)
    merge_into(merged, copy.deepcopy(override))
    return merged


def read_mapping(path: Path) -> dict[str, Any]:
    """A YAML file of parameter sections as a dict; a UserError if it is not one."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} must be a mapping of sections (data:, train:, ...).")
    return values


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Load and validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run the stages from the repository root.")
    raw = read_mapping(path)
    if "profiles" in raw or "profile" in raw:
        raise UserError(f"{path} has a `profile:`/`profiles:` key from an older layout: profiles "
                        "now live in profiles/<name>.yaml; run `mr2unet profile paper` (or "
                        "`git checkout params.yaml`) to rewrite it.")
    check_known_keys(raw, where=str(path))
    validate(raw)
    return raw


def _unknown(keys: list[str], known: tuple[str, ...], prefix: str) -> str | None:
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean `{prefix}{close[0]}`?" if close else ""
            return (f"unknown key `{prefix}{key}`{hint} Valid keys here: "
                    f"{', '.join(known)}.")
    return None


def check_known_keys(params: dict[str, Any], where: str = "params.yaml") -> None:
    """Raise :class:`UserError` on the first key that no stage reads (a typo)."""
    _check_moved_keys(params, where)
    problem = _unknown(list(params), TOP_LEVEL, "")
    for section, known in KNOWN_KEYS.items():
        if problem:
            break
        value = params.get(section)
        if isinstance(value, dict):
            problem = _unknown(list(value), known, f"{section}.")
    folder = (params.get("data") or {}).get("folder")
    if not problem and isinstance(folder, dict):
        problem = _unknown(list(folder), FOLDER_KEYS, "data.folder.")
    for name, (required, optional) in LABEL_KEYS.items():
        spec = (params.get("data") or {}).get(name)
        if not problem and isinstance(spec, dict):
            problem = _unknown(list(spec), required + optional, f"data.{name}.")
    if problem:
        raise UserError(f"{where}: {problem}")


def _check_moved_keys(params: dict[str, Any], where: str) -> None:
    """One clear error for a key of an older layout (``train.cpu_threads``...)."""
    train = params.get("train")
    for key in train if isinstance(train, dict) else ():
        dotted = f"train.{key}"
        if dotted in MOVED_KEYS:
            raise UserError(f"{where}: `{dotted}` moved to `{MOVED_KEYS[dotted]}` (the new "
                            "`run:` section: how runs execute, not DVC dependencies); move "
                            "it there, or rewrite the file with `mr2unet profile paper`.")
        if dotted in REMOVED_KEYS:
            raise UserError(f"{where}: `{dotted}` was removed (its committed value `auto` "
                            "or `false` is what always runs; docs/params.md): delete it.")


def _get(params: dict[str, Any], dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise UserError(f"params.yaml: missing key `{dotted}`.")
        node = node[part]
    return node


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise UserError(f"params.yaml: `{key}` is {value!r}; expected {expected}.")


def _is_int(value: Any) -> bool:
    """An integer, not a bool (YAML's ``true`` is an ``int`` to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """An integer or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(params: dict[str, Any], key: str) -> None:
    value = _get(params, key)
    _check(_is_int(value) and value > 0,
           key, value, "a positive integer")


def _positive_number(params: dict[str, Any], key: str) -> None:
    value = _get(params, key)
    _check(_is_number(value) and value > 0,
           key, value, "a positive number")


def _choice(params: dict[str, Any], key: str, choices: tuple[Any, ...]) -> None:
    """``value`` must be one of ``choices``, of the same type (``1`` is not ``True``)."""
    value = _get(params, key)
    _check(any(value == c and type(value) is type(c) for c in choices), key, value,
           "one of " + ", ".join(map(str, choices)))


def _check_loss_knobs(params: dict[str, Any]) -> None:
    """The numbers of the losses (training.losses); `class_weights` only where it is used."""
    weights = _get(params, "train.class_weights")
    _check(weights == "auto" or (isinstance(weights, list) and len(weights) == 2
                                 and all(_is_number(w) and w > 0 for w in weights)),
           "train.class_weights", weights,
           "auto (from the training masks) or a list of two positive numbers [w0, w1]")
    for key in ("train.dice_weight", "train.focal_gamma", "train.tversky_alpha",
                "train.tversky_beta"):
        value = _get(params, key)
        _check(_is_number(value) and value >= 0, key, value, "a number >= 0")
    alpha, beta = params["train"]["tversky_alpha"], params["train"]["tversky_beta"]
    _check(alpha + beta > 0, "train.tversky_alpha", alpha,
           "a number >= 0 with tversky_alpha + tversky_beta > 0")


def _check_run(params: dict[str, Any]) -> None:
    """The ``run:`` section (mr2unet.training.options.RunOptions; docs/training.md)."""
    device = _get(params, "run.device")
    _check(isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device)
           is not None, "run.device", device, "auto, cpu, cuda, cuda:N or mps")
    _choice(params, "run.precision", ("auto", "bf16", "fp16", "fp32"))
    _choice(params, "run.channels_last", ("auto", True, False))
    threads = _get(params, "run.cpu_threads")
    _check(threads is None or (_is_int(threads) and threads > 0),
           "run.cpu_threads", threads, "null (one per core) or a positive integer")
    _choice(params, "run.compile", (False, True))
    _choice(params, "run.adam_impl", ADAM_IMPLS)
    _choice(params, "run.cuda_graphs", (False, True))
    _choice(params, "run.deterministic", (True, False))
    _check(not (params["run"]["cuda_graphs"] and params["run"]["compile"]),
           "run.cuda_graphs", True, "false while run.compile is true (pick one)")
    for key in ("run.checkpoint_every", "run.log_every"):
        _positive_int(params, key)


# `prepare.tile_predict`: how a tiles model predicts a whole image (mr2unet.models.tiling),
# or "auto" (AUTO below): the train stage predicts the validation split blocks and windows
# and keeps blocks unless windows score better (mr2unet.evaluation.validation)
BLOCKS, WHOLE, WINDOWS = "blocks", "whole", "windows"
TILE_PREDICTS = (BLOCKS, WHOLE, WINDOWS)

# `evaluate.image_score`: how mr2unet.metrics.image.image_scores scores an image
IMAGE_SCORES = ("max_smoothed", "top_k_mean")
# `evaluate.fit_for_use`: the verdict's bars (mr2unet.evaluation.verdict) and their
# defaults; FIT_FOR_USE_KEYS required in params.yaml, false_alarm_rate may be left out
FIT_FOR_USE = {"pixel_auroc": 0.85, "iou": 0.25, "false_alarm_rate": 0.1}
FIT_FOR_USE_KEYS = ("pixel_auroc", "iou")


# evaluate.threshold: a fixed probability, or a rule applied to the validation split, by
# name (mr2unet.evaluation.threshold.parse_rule turns these forms into a ThresholdRule).
BEST_IOU, AUTO, MAX_FALSE_ALARM_RATE = "best_iou", "auto", "max_false_alarm_rate"
THRESHOLD_RULE = re.compile(rf"{BEST_IOU}|{AUTO}|(?P<kind>{MAX_FALSE_ALARM_RATE}|{AUTO})="
                            r"(?P<rate>[0-9.eE+-]+)")


def _check_threshold(params: dict[str, Any]) -> None:
    """``split.val_fraction`` and ``evaluate.threshold`` (docs/evaluation.md, "Threshold")."""
    val = _get(params, "split.val_fraction")
    _check(_is_number(val) and 0 <= val < 1, "split.val_fraction", val,
           "a number in [0, 1): the share of each category's training images kept for "
           "validation (0: none, the paper)")
    rule = _get(params, "evaluate.threshold")
    if _is_number(rule):
        _check(0 < rule < 1, "evaluate.threshold", rule, "a probability strictly between 0 "
               "and 1, best_iou or max_false_alarm_rate=<r>")
        return
    found = THRESHOLD_RULE.fullmatch(rule) if isinstance(rule, str) else None
    rate = found and found["rate"]
    _check(found is not None and (rate is None or _is_rate(rate)), "evaluate.threshold", rule,
           "0.5 (a fixed probability in (0, 1)), best_iou, max_false_alarm_rate=<r> or "
           "auto=<r> with 0 <= r <= 1 (e.g. max_false_alarm_rate=0.05), or auto")
    _check(val > 0, "evaluate.threshold", rule, f"a fixed probability such as 0.5 while "
           f"split.val_fraction is 0: {rule} is chosen on validation images, so set "
           f"split.val_fraction (e.g. 0.2)")
    needs_good = found is not None and found["kind"] == MAX_FALSE_ALARM_RATE
    _check(not needs_good or params["prepare"]["good_images"] != 0, "evaluate.threshold", rule,
           "best_iou, auto or a fixed probability while prepare.good_images is 0: the "
           "false-alarm "
           "rate needs good (defect-free) validation images, so set prepare.good_images "
           "(e.g. all)")


def _is_rate(text: str) -> bool:
    try:
        return 0 <= float(text) <= 1
    except ValueError:
        return False


def _check_image_level(params: dict[str, Any]) -> None:
    """``evaluate.image_score``, ``min_defect_area`` and ``fit_for_use`` (docs/params.md)."""
    _choice(params, "evaluate.image_score", IMAGE_SCORES)
    area = _get(params, "evaluate.min_defect_area")
    _check(_is_int(area) and area >= 1, "evaluate.min_defect_area", area,
           "a whole number of pixels, at least 1")
    fit = _get(params, "evaluate.fit_for_use")
    _check(isinstance(fit, dict) and set(FIT_FOR_USE_KEYS) <= set(fit) <= set(FIT_FOR_USE)
           and all(_is_number(v) and 0 <= v <= 1 for v in fit.values()),
           "evaluate.fit_for_use", fit, "a mapping {pixel_auroc: 0.85, iou: 0.25, "
           "false_alarm_rate: 0.1}: the first two keys required, each value a number in "
           "[0, 1]")


def _check_layout(params: dict[str, Any]) -> None:
    """`data.layout`, `data.folder`, `prepare.good_images`, `synthetic.good_images`."""
    _choice(params, "data.layout", LAYOUTS)
    layout = params["data"]["layout"]
    _check(not (layout != "mvtec" and params["data"]["source"] == "synthetic"), "data.layout",
           layout, "mvtec with data.source: synthetic (the generator writes MVTec's layout)")
    folder = _get(params, "data.folder")
    _check(folder is None or isinstance(folder, dict), "data.folder", folder,
           "null or a mapping (images:, masks:, ...)")
    if layout == "folder":
        _check(isinstance(folder, dict) and all(
            isinstance(folder.get(k), str) and folder[k] for k in ("images", "masks")),
            "data.folder", folder, "a mapping with at least images: and masks: (folders or "
            "globs relative to the data set's root)")
        lists = folder.get("split_lists")
        _check(lists is None or (isinstance(lists, dict) and set(lists) == {"train", "test"}),
               "data.folder.split_lists", lists, "null or {train: <file>, test: <file>}")
        _check(isinstance(folder.get("category", "custom"), str), "data.folder.category",
               folder.get("category"), "a name")
    for name, (required, optional) in LABEL_KEYS.items():
        spec = params["data"].get(name)
        _check(spec is None or isinstance(spec, dict), f"data.{name}", spec,
               f"null or a mapping ({', '.join(f'{k}:' for k in required + optional)})")
        if layout == name:
            _check(isinstance(spec, dict) and all(isinstance(spec.get(k), str) and spec[k]
                                                  for k in required), f"data.{name}", spec,
                   f"a mapping with {' and '.join(f'{k}:' for k in required)} (a path "
                   f"relative to the data set's root; docs/data.md)")
            _check(all(spec.get(k) is None or isinstance(spec[k], str) for k in optional),
                   f"data.{name}", spec, f"{', '.join(optional)}: null or a string")
    good = _get(params, "prepare.good_images")
    _check(good == "all" or (_is_int(good) and good >= 0), "prepare.good_images", good,
           "0 (the paper: defective images only), a number per category, or all")
    count = _get(params, "synthetic.good_images")
    _check(_is_int(count) and count >= 0, "synthetic.good_images", count, "an integer >= 0")


def _check_tiles(params: dict[str, Any]) -> None:
    """`prepare.mode` and the tiles knobs (mr2unet.data.prepare, mr2unet.models.tiling)."""
    _choice(params, "prepare.mode", ("resize", "tiles", "auto"))
    crop = params["prepare"]["image_size"]
    source = _get(params, "prepare.tile_source_size")
    _check(source is None or (_is_int(source) and source >= crop), "prepare.tile_source_size",
           source, f"null (native size) or an integer >= prepare.image_size ({crop}, the crop)")
    stride = _get(params, "prepare.tile_stride")
    _check(stride is None or (_is_int(stride) and 0 < stride <= crop), "prepare.tile_stride",
           stride, f"null (three quarters of a crop) or an integer in 1..{crop}")
    _choice(params, "prepare.tile_predict", (AUTO, *TILE_PREDICTS))
    share = _get(params, "prepare.defect_crop_fraction")
    _check(_is_number(share) and 0 <= share <= 1, "prepare.defect_crop_fraction", share,
           "a number in [0, 1]")


def validate(params: dict[str, Any]) -> None:
    """Raise :class:`UserError` naming the first key whose value cannot work."""
    _choice(params, "data.source", SOURCES)
    _check_layout(params)
    source = params["data"]["source"]
    if source == "url":
        url = _get(params, "data.url")
        _check(isinstance(url, str) and re.match(r"^(https?|file)://", url) is not None,
               "data.url", url, "an http(s):// or file:// URL")
    if source == "archive":
        archive = _get(params, "data.archive")
        _check(isinstance(archive, str) and project_path(archive).is_file(), "data.archive",
               archive, "the path of an existing MVTec AD .tar/.tar.xz file (absolute, or "
               "relative to the repository root)")
    if source == "directory":
        directory = _get(params, "data.directory")
        _check(isinstance(directory, str) and project_path(directory).is_dir(),
               "data.directory", directory, "the path of an existing, extracted MVTec AD "
               "directory (absolute, or relative to the repository root)")
    sha = _get(params, "data.sha256")
    _check(sha is None or (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha) is not None),
           "data.sha256", sha, "null or 64 lowercase hex digits")
    _check(isinstance(_get(params, "data.categories"), list), "data.categories",
           params["data"]["categories"], "a list of category names ([] = all)")
    _positive_int(params, "synthetic.images_per_defect")
    fraction = _get(params, "split.test_fraction")
    _check(isinstance(fraction, int | float) and 0 < fraction < 1, "split.test_fraction",
           fraction, "a number strictly between 0 and 1")
    size = _get(params, "prepare.image_size")
    _check(isinstance(size, int) and size >= 16 and size % 16 == 0, "prepare.image_size",
           size, "a multiple of 16 (the networks down-sample four times)")
    _choice(params, "prepare.resize", ("squash", "pad"))
    _check_tiles(params)
    threshold = _get(params, "prepare.mask_threshold")
    _check(isinstance(threshold, int | float) and 0 < threshold <= 1, "prepare.mask_threshold",
           threshold, "a number in (0, 1]")
    # which names exist is the models registry's (mr2unet.models.check_model_params, called
    # by the stages and the command line): this package sits below it and cannot see it
    models = _get(params, "train.models")
    _check(isinstance(models, list) and len(models) > 0
           and all(isinstance(m, str) for m in models),
           "train.models", models, "a non-empty list of model names")
    for key in ("train.epochs", "train.batch_size", "train.base_width", "evaluate.batch_size"):
        _positive_int(params, key)
    steps = _get(params, "train.steps")
    _check(steps is None or (_is_int(steps) and steps > 0), "train.steps", steps,
           "null (train.epochs decides) or a positive number of optimiser steps")
    _positive_number(params, "train.lr")
    decay = _get(params, "train.weight_decay")
    _check(_is_number(decay) and decay >= 0,
           "train.weight_decay", decay, "a number >= 0")
    _choice(params, "train.lr_schedule", LR_SCHEDULES)
    _choice(params, "train.loss", LOSSES)
    _check_loss_knobs(params)
    _choice(params, "train.augment", ("none", "flips", "flips_rot90"))
    _check_run(params)
    empty = _get(params, "evaluate.empty_score")
    _check(_is_number(empty) and empty in (0, 1),
           "evaluate.empty_score", empty, "1.0 or 0.0")
    _check_image_level(params)
    _check_threshold(params)
    options = _get(params, "train.model_options")
    _check(isinstance(options, dict), "train.model_options", options,
           "a mapping keyed by model name")
