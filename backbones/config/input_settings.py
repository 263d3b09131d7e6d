"""What a config learns from its MODEL.WEIGHTS: the input settings (INPUT.FORMAT,
MODEL.PIXEL_MEAN/STD, MODEL.RESNETS.STRIDE_IN_1X1) of their source and the architecture they hold,
from a published address without downloading it, or from the file (a local path, or a copy in
Detectron2's download cache)."""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping, Sequence

import yaml
from detectron2.config import CfgNode
from detectron2.utils.file_io import PathManager

from ..modeling.blocks import BLOCK_TYPES
from ..specs import DEPTHS
from ..weights import (
    SOURCES,
    InputSettings,
    Weights,
    published_weights,
    read_weights,
    source_of_url,
)
from .weights_file import fetch_weights

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


class WeightsArchitectureError(InputSettingsError):
    """A config whose network differs from the one its weights hold (depth, blocks, widths,
    groups, stem, shortcuts, stride placement)."""


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


def read_ahead(path: str, trusted: bool) -> Weights:
    """The weights of the local file ``path``, read once: kept until the checkpointer that
    loads the same file takes them (:func:`take_read_ahead`)."""
    key = _file_key(path, trusted)
    if key not in _READ_AHEAD:
        _READ_AHEAD.clear()
        _READ_AHEAD[key] = read_weights(path, trusted=trusted)
    return _READ_AHEAD[key]


def weights_source(cfg: CfgNode) -> tuple[str, InputSettings | None] | None:
    """The source of ``cfg.MODEL.WEIGHTS`` and its input settings, None without weights.

    Published addresses (:data:`backbones.weights.PUBLISHED_WEIGHTS`) and registered prefixes
    are answered without downloading; other addresses are fetched through Detectron2's
    PathManager (as loading them would).
    """
    found = _weights_facts(cfg)
    return None if found is None else found[:2]


def _weights_facts(cfg: CfgNode) -> tuple[str, InputSettings | None, dict[str, Any]] | None:
    """:func:`weights_source` and the architecture the weights hold (a published file's from
    its record; empty for a registered prefix, whose architecture is the config's own)."""
    url = cfg.MODEL.WEIGHTS
    if not url:
        return None
    published = published_weights(url)
    if published is not None:
        return published.source, SOURCES[published.source].input, published.architecture
    source = source_of_url(url)
    if source is not None:
        return source, SOURCES[source].input, {}
    weights = read_ahead(fetch_weights(url), cfg.BACKBONES.TRUST_WEIGHTS_FILE)
    return weights.origin, weights.input, weights.architecture


# ---------------------------------------------------------------------------------------------
# The network the weights hold against the config's


def architecture_conflicts(
    cfg: CfgNode, architecture: Mapping[str, Any], settings: InputSettings | None = None
) -> list[tuple[str, Any, Any]]:
    """The config keys whose network differs from the one ``architecture`` (of
    :func:`backbones.weights.infer_architecture`, or a published file's) describes: blocks per
    stage and block type (``MODEL.RESNETS.DEPTH``), widths, groups, the stem, the shortcuts and,
    with ``settings``, the stride placement.

    Returns:
        ``(key, the config's value, the weights' value)`` for each, the structure first.
    """
    r, ours = cfg.MODEL.RESNETS, cfg.BACKBONES
    found: list[tuple[str, Any, Any]] = []
    depth, blocks = architecture.get("depth"), architecture.get("blocks_per_stage")
    block = architecture.get("block_type") or (DEPTHS[depth].block if depth in DEPTHS else None)
    mine = _blocks_of(cfg)
    if blocks and block and mine is not None and mine != (block, tuple(blocks)):
        if depth in DEPTHS:
            found.append(("MODEL.RESNETS.DEPTH", r.DEPTH, depth))
            if ours.STAGE_BLOCKS:
                found.append(("BACKBONES.STAGE_BLOCKS", list(ours.STAGE_BLOCKS), []))
        else:
            found.append(("BACKBONES.STAGE_BLOCKS", list(ours.STAGE_BLOCKS), list(blocks)))
            found.append(("BACKBONES.BLOCK_TYPE", ours.BLOCK_TYPE, block))
    wanted = {
        "MODEL.RESNETS.STEM_OUT_CHANNELS": architecture.get("stem_out_channels"),
        "MODEL.RESNETS.RES2_OUT_CHANNELS": architecture.get("res2_out_channels"),
        # Basic blocks have no grouped conv (and no use for WIDTH_PER_GROUP).
        "MODEL.RESNETS.NUM_GROUPS": architecture.get("num_groups", 1 if block == "basic" else None),
        "MODEL.RESNETS.WIDTH_PER_GROUP": architecture.get("width_per_group"),
        "BACKBONES.STEM_TYPE": architecture.get("stem_type", "basic" if architecture else None),
        "BACKBONES.AVG_DOWN": architecture.get("avg_down"),
        "BACKBONES.RESIDUAL": architecture.get("residual"),
    }
    if architecture.get("stem_type") == "deep":
        wanted["BACKBONES.STEM_WIDTH"] = architecture.get("stem_width")
    if settings is not None and _has_strided_1x1(cfg):
        wanted["MODEL.RESNETS.STRIDE_IN_1X1"] = settings.stride_in_1x1
    for key, value in wanted.items():
        node, leaf = _node(cfg, key)
        if value is not None and not _same(node[leaf], value):
            found.append((key, node[leaf], value))
    return found


def _blocks_of(cfg: CfgNode) -> tuple[str, tuple[int, ...]] | None:
    """(block type, blocks per stage) of the ResNet a config builds, None for an unknown depth."""
    if cfg.BACKBONES.STAGE_BLOCKS:
        return cfg.BACKBONES.BLOCK_TYPE, tuple(cfg.BACKBONES.STAGE_BLOCKS)
    spec = DEPTHS.get(cfg.MODEL.RESNETS.DEPTH)
    return None if spec is None else (spec.block, spec.blocks_per_stage)


def check_architecture(
    cfg: CfgNode,
    architecture: Mapping[str, Any],
    weights: str,
    *,
    settings: InputSettings | None = None,
    config_file: str = "",
) -> None:
    """Refuse a config whose network is not the one its weights hold
    (:func:`architecture_conflicts`), in one line naming both values, the keys to set and,
    where ``config_file``'s folder has one, the config made for those weights.

    Args:
        weights: how to name the weights (``MODEL.WEIGHTS URL``, with the file read).
        settings: the input settings stored in or implied by the file, to check the stride
            placement too.
        config_file: the YAML the config came from, to offer its sibling for the weights.

    Raises:
        WeightsArchitectureError: a difference.
    """
    conflicts = architecture_conflicts(cfg, architecture, settings)
    if not conflicts:
        return
    differences = "; ".join(
        f"{k} is {_show(mine)}, the weights' {_show(w)}" for k, mine, w in conflicts
    )
    fix = " ".join(f"{k} {_cli(w)}" for k, _, w in conflicts)
    other = _config_for(config_file, architecture)
    fix = f"Use {other} (the config for these weights), set {fix}" if other else f"Set {fix}"
    raise WeightsArchitectureError(
        f"{weights} holds {_network(architecture)}, not the config's network: {differences}. "
        f"{fix}, or give weights of the config's network"
    )


def _network(architecture: Mapping[str, Any]) -> str:
    """``a ResNet-18 (basic blocks)``, ``a ResNeXt-101 32x8d``: the network in words."""
    depth, blocks = architecture.get("depth"), architecture.get("blocks_per_stage")
    groups, width = architecture.get("num_groups", 1), architecture.get("width_per_group", 64)
    name = f"ResNet-{depth}" if depth else f"ResNet with blocks {tuple(blocks or ())}"
    if groups > 1:
        name = f"ResNeXt-{depth} {groups}x{width}d"
    elif width != 64:
        name = f"wide {name} (width {width})"
    if depth in DEPTHS:
        name += f" ({DEPTHS[depth].block} blocks)"
    return f"a {name}"


# A preset in a config's name: frcnn_r50_3x.yaml, mrcnn_x101_32x8d_3x.yaml.
_PRESET = re.compile(r"(?<=_)(r\d+|x\d+_\d+x\d+d)(?=_|$)")


def _config_for(config_file: str, architecture: Mapping[str, Any]) -> str | None:
    """``config_file``'s sibling for these weights' preset (frcnn_r50.yaml -> frcnn_r18.yaml),
    if there is one."""
    depth = architecture.get("depth")
    if not config_file or depth is None:
        return None
    groups, width = architecture.get("num_groups", 1), architecture.get("width_per_group", 64)
    if (groups, width) == (1, 64):
        preset = f"r{depth}"
    elif groups > 1:
        preset = f"x{depth}_{groups}x{width}d"
    else:
        return None  # wide ResNets have no configs of their own
    folder, name = os.path.split(config_file)
    stem, ext = os.path.splitext(name)
    other = os.path.join(folder, _PRESET.sub(preset, stem, count=1) + ext)
    return other if other != config_file and os.path.isfile(other) else None


# ---------------------------------------------------------------------------------------------
# Input settings from the weights


def apply_input_settings(
    cfg: CfgNode, origins: Mapping[str, str], *, config_file: str = ""
) -> list[str]:
    """Set the input settings of ``cfg`` (not frozen) from its ``MODEL.WEIGHTS``.

    With ``BACKBONES.INPUT_FROM_WEIGHTS "auto"``, each of ``INPUT.FORMAT``,
    ``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD`` and ``MODEL.RESNETS.STRIDE_IN_1X1`` that the user
    did not set (absent from ``origins``) takes the value of the weights' source; one the user
    set to another value is an error. So do the architecture facts the file shows
    (:data:`ARCHITECTURE_KEYS`: deep stem, avg-down, shortcuts), as ``make_resnet(weights=...)``
    takes them. A network of another depth, blocks, widths or groups than the weights' is an
    error first (:func:`check_architecture`). ``"off"`` keeps the config as it is.

    Args:
        origins: where each key was set (:func:`config_origins`).
        config_file: the YAML, to offer its sibling made for the weights.

    Returns:
        "KEY: value" lines for the keys it set.

    Raises:
        WeightsArchitectureError: the weights hold another network (names both values).
        InputSettingsError: a user setting contradicts the weights (names both values).
        WeightsUnavailableError: an address that is not published, cannot be downloaded.
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
    # Another network first: its fix (another config) also brings its input settings.
    if any(key not in ARCHITECTURE_KEYS for key, *_ in architecture_conflicts(cfg, architecture)):
        check_architecture(
            cfg, architecture, f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS}", config_file=config_file
        )
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
