"""Input settings (INPUT.FORMAT, MODEL.PIXEL_MEAN/STD, MODEL.RESNETS.STRIDE_IN_1X1) of a config from
the source of its MODEL.WEIGHTS."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import yaml
from detectron2.config import CfgNode
from detectron2.utils.file_io import PathManager

from ..modeling.blocks import BLOCK_TYPES
from ..specs import DEPTHS
from ..weights import SOURCES, InputSettings, Weights, read_weights, source_of_url

logger = logging.getLogger(__name__)

# Config keys of the input settings, with the InputSettings field each comes from.
INPUT_KEYS = {
    "INPUT.FORMAT": "format",
    "MODEL.PIXEL_MEAN": "pixel_mean",
    "MODEL.PIXEL_STD": "pixel_std",
    "MODEL.RESNETS.STRIDE_IN_1X1": "stride_in_1x1",
}
INPUT_FROM_WEIGHTS = ("auto", "off")
# Config keys of the architecture facts a weights file shows, with the make_resnet argument each
# comes from (as make_resnet(weights=...) takes them from the file): timm's ResNet-D has a deep
# stem and avg-down shortcuts, a plain net has no shortcut.
ARCHITECTURE_KEYS = {
    "BACKBONES.STEM_TYPE": "stem_type",
    "BACKBONES.STEM_WIDTH": "stem_width",
    "BACKBONES.AVG_DOWN": "avg_down",
    "BACKBONES.RESIDUAL": "residual",
}


class InputSettingsError(ValueError):
    """A config input setting that contradicts the weights' source."""


# ---------------------------------------------------------------------------------------------
# Input settings in configs


def input_settings_of(cfg: CfgNode) -> InputSettings:
    """The input settings a config uses."""
    return InputSettings(
        cfg.INPUT.FORMAT,
        tuple(cfg.MODEL.PIXEL_MEAN),
        tuple(cfg.MODEL.PIXEL_STD),
        bool(cfg.MODEL.RESNETS.STRIDE_IN_1X1),
    )


def config_origins(config_file: str = "", opts: Sequence[str] = ()) -> dict[str, str]:
    """Every key a user set, with where: the YAML (following ``_BASE_``) or the command line.

    Returns:
        ``{"MODEL.PIXEL_MEAN": "configs/frcnn_r50.yaml", "INPUT.FORMAT": "command line", ...}``.
    """
    origins: dict[str, str] = {}
    if config_file:
        _yaml_origins(config_file, origins)
    for key in list(opts)[::2]:
        origins[key] = "the command line"
    return origins


class _KeysLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``!!python/...`` values as None, running nothing: only the
    keys matter here (Detectron2 loads the values). Detectron2's zoo Base-RetinaNet.yaml writes
    ``ANCHOR_GENERATOR.SIZES`` as ``!!python/object/apply:eval``, which safe_load refuses."""


_KeysLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def _yaml_origins(path: str, origins: dict[str, str], prefix: str = "") -> None:
    with PathManager.open(path, "r") as f:
        data = yaml.load(f, Loader=_KeysLoader) or {}
    bases = data.pop("_BASE_", None) or []
    for base in [bases] if isinstance(bases, str) else bases:
        base = os.path.expanduser(base)
        if not os.path.isabs(base) and "://" not in base:
            base = os.path.join(os.path.dirname(path), base)
        _yaml_origins(base, origins)

    def walk(node: Mapping[str, Any], stem: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{stem}{key}.")
            else:
                origins[f"{stem}{key}"] = path

    walk(data, prefix)


# apply_input_settings reads MODEL.WEIGHTS to learn its source; the checkpointer that loads the
# same file next takes it from here instead of reading it again, and drops it (one file at most,
# not kept for the whole run).
_READ_AHEAD: dict[tuple, Weights] = {}


def _file_key(path: str, trusted: bool) -> tuple:
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_mtime_ns, stat.st_size, bool(trusted)


def take_read_ahead(path: str, trusted: bool) -> Weights | None:
    """The weights read from ``path`` while resolving the config, handed over once and dropped."""
    try:
        return _READ_AHEAD.pop(_file_key(path, trusted), None)
    except OSError:
        return None


def drop_read_ahead() -> None:
    """Forget the weights read while resolving the config (e.g. before starting worker
    processes, which read the file themselves)."""
    _READ_AHEAD.clear()


def _read_ahead(path: str, trusted: bool) -> Weights:
    key = _file_key(path, trusted)
    if key not in _READ_AHEAD:
        _READ_AHEAD.clear()
        _READ_AHEAD[key] = read_weights(path, trusted=trusted)
    return _READ_AHEAD[key]


def weights_source(cfg: CfgNode) -> tuple[str, InputSettings | None] | None:
    """The source of ``cfg.MODEL.WEIGHTS`` and its input settings, None without weights.

    Known Detectron2 zoo addresses are answered without downloading; other addresses are
    fetched through Detectron2's PathManager (as loading them would).
    """
    found = _weights_facts(cfg)
    return None if found is None else found[:2]


def _weights_facts(cfg: CfgNode) -> tuple[str, InputSettings | None, dict[str, Any]] | None:
    """:func:`weights_source` and the architecture the file shows (empty for zoo addresses,
    whose architecture is the config's own)."""
    url = cfg.MODEL.WEIGHTS
    if not url:
        return None
    source = source_of_url(url)
    if source is not None:
        return source, SOURCES[source].input, {}
    path = url if os.path.isfile(url) else PathManager.get_local_path(url)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.WEIGHTS: weights file not found: {url}")
    weights = _read_ahead(path, cfg.BACKBONES.TRUST_WEIGHTS_FILE)
    return weights.origin, weights.input, weights.architecture


def apply_input_settings(cfg: CfgNode, origins: Mapping[str, str]) -> list[str]:
    """Set the input settings of ``cfg`` (not frozen) from its ``MODEL.WEIGHTS``.

    With ``BACKBONES.INPUT_FROM_WEIGHTS "auto"``, each of ``INPUT.FORMAT``,
    ``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD`` and ``MODEL.RESNETS.STRIDE_IN_1X1`` that the user
    did not set (absent from ``origins``) takes the value of the weights' source; one the user
    set to another value is an error. So do the architecture facts the file shows
    (:data:`ARCHITECTURE_KEYS`: deep stem, avg-down, shortcuts), as ``make_resnet(weights=...)``
    takes them. ``"off"`` keeps the config as it is.

    Returns:
        "KEY: value" lines for the keys it set.

    Raises:
        InputSettingsError: a user setting contradicts the weights (names both values).
    """
    mode = cfg.BACKBONES.INPUT_FROM_WEIGHTS
    if mode not in INPUT_FROM_WEIGHTS:
        raise InputSettingsError(
            f"BACKBONES.INPUT_FROM_WEIGHTS is {mode!r}; options: {', '.join(INPUT_FROM_WEIGHTS)}"
        )
    found = _weights_facts(cfg) if mode == "auto" else None
    if not found:
        return []
    source, settings, architecture = found
    wanted_values = {
        key: architecture[attr] for key, attr in ARCHITECTURE_KEYS.items() if attr in architecture
    }
    if settings is not None:
        for key, attr in INPUT_KEYS.items():
            if key == "MODEL.RESNETS.STRIDE_IN_1X1" and not _has_strided_1x1(cfg):
                continue  # e.g. basic blocks: no 1x1 conv, any value builds the same network
            wanted_values[key] = getattr(settings, attr)
    if architecture.get("stem_type") != "deep":
        wanted_values.pop("BACKBONES.STEM_WIDTH", None)  # unused by the basic stem
    changed, conflicts = [], []
    for key, wanted in wanted_values.items():
        node, leaf = _node(cfg, key)
        current = node[leaf]
        if _same(current, wanted):
            continue
        if key in origins:
            conflicts.append(
                f"{key} is {_show(current)} (set in {origins[key]}), the weights want "
                f"{_show(wanted)}"
            )
            continue
        node[leaf] = list(wanted) if isinstance(wanted, tuple) else wanted
        changed.append(f"{key}: {_show(wanted)}")
    if conflicts:
        fix = " ".join(
            f"{key} {_cli(wanted)}"
            for key, wanted in wanted_values.items()
            if any(c.startswith(key + " ") for c in conflicts)
        )
        raise InputSettingsError(
            f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} ({source}) was trained with other input "
            "settings or architecture than the config's:\n  "
            + "\n  ".join(conflicts)
            + f"\nSet them "
            f"(e.g. on the command line: {fix}), or set BACKBONES.INPUT_FROM_WEIGHTS off to "
            "keep yours."
        )
    if changed:
        logger.info("Input settings and architecture of %s weights: %s", source, "; ".join(changed))
    return changed


def _has_strided_1x1(cfg: CfgNode) -> bool:
    depth = cfg.MODEL.RESNETS.DEPTH
    return depth not in DEPTHS or BLOCK_TYPES[DEPTHS[depth].block].strided_1x1


def _node(cfg: CfgNode, key: str) -> tuple[CfgNode, str]:
    *path, leaf = key.split(".")
    for part in path:
        cfg = cfg[part]
    return cfg, leaf


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(abs(float(x) - float(y)) < 1e-6 for x, y in zip(a, b))
    return a == b


def _cli(value: Any) -> str:
    """A value as written after its key on the command line."""
    return f'"{_show(value)}"' if isinstance(value, (list, tuple)) else str(value)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(f"{float(v):g}" for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)
