"""Loading ResNet weights of any source into models and configs, with a short report.

:class:`BackbonesCheckpointer` is Detectron2's ``DetectionCheckpointer`` that reads every format of
:mod:`backbones.weights` safely, refuses shape mismatches, writes checkpoints atomically, and stores
the input settings in them. :func:`apply_input_settings` sets ``INPUT.FORMAT``, ``MODEL.PIXEL_*``
and ``MODEL.RESNETS.STRIDE_IN_1X1`` from ``MODEL.WEIGHTS`` unless the user set them.
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.modeling.backbone.resnet import ResNet as D2ResNet
from detectron2.utils.file_io import PathManager
from torch import nn

from .resnet import ResNet
from .specs import DEPTHS
from .weights import (
    SOURCES,
    InputSettings,
    Weights,
    WeightsFormatError,
    atomic_write,
    read_file,
    read_weights,
    resnet_prefix,
    source_of_url,
    weights_from_object,
)

__all__ = [
    "BackbonesCheckpointer",
    "InputSettingsError",
    "LoadReport",
    "WeightsShapeError",
    "apply_input_settings",
    "config_origins",
    "load_weights",
]

logger = logging.getLogger(__name__)

# Config keys of the input settings, with the InputSettings field each comes from.
INPUT_KEYS = {
    "INPUT.FORMAT": "format",
    "MODEL.PIXEL_MEAN": "pixel_mean",
    "MODEL.PIXEL_STD": "pixel_std",
    "MODEL.RESNETS.STRIDE_IN_1X1": "stride_in_1x1",
}
INPUT_FROM_WEIGHTS = ("auto", "off")


class WeightsShapeError(WeightsFormatError):
    """A tensor whose shape differs between the weights file and the model."""


class InputSettingsError(ValueError):
    """A config input setting that contradicts the weights' source."""


# ---------------------------------------------------------------------------------------------
# Loading into a model


@dataclass
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        path, source: the file and its source (a key of ``weights.SOURCES``).
        loaded: model names that received a tensor.
        missing: model names the file lacks, by group (``backbone.fpn_lateral*``, ``roi_heads``).
        expected_missing: True where those are expected (an ImageNet file has no detector heads).
        unused: file names the model does not have (``fc.weight``, ...).
        skipped: names whose shape differs, skipped because the caller allowed it.
    """

    path: str
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    expected_missing: dict[str, bool] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """A few lines for the log."""
        out = [
            f"Loaded {len(self.loaded)} tensors from {self.path} ({SOURCES[self.source].description})"
        ]
        for group, names in self.missing.items():
            note = (
                "not in an ImageNet checkpoint, expected"
                if self.expected_missing.get(group)
                else "NOT IN THE FILE: they keep their initialisation"
            )
            out.append(f"  {group}: {len(names)} tensors {note}")
        if self.unused:
            out.append(f"  in the file, not in the model: {_summarise(self.unused)}")
        if self.skipped:
            out.append(f"  skipped (shape differs, allowed): {', '.join(self.skipped)}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _group(name: str) -> str:
    parts = name.split(".")
    head = ".".join(parts[:2]) if parts[0] == "backbone" and len(parts) > 2 else parts[0]
    return re.sub(r"\d+$", "*", head) + ".*"


def _summarise(names: Sequence[str], limit: int = 4) -> str:
    groups = sorted({_group(n) for n in names})
    shown = ", ".join(groups[:limit])
    return shown + (f" (+{len(groups) - limit} more)" if len(groups) > limit else "")


def _resnet_module_prefix(model: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, (ResNet, D2ResNet)):
            return name + "." if name else ""
    return None


def _align(weights: Weights, model_keys: set[str], model: nn.Module) -> dict[str, torch.Tensor]:
    """The file's tensors under the model's names."""
    if weights.is_backbone_only:
        prefix = _resnet_module_prefix(model)
        if prefix is None:
            raise WeightsFormatError(
                f"{weights.path}: ImageNet ResNet weights, but the model has no ResNet module"
            )
        return {prefix + k: v for k, v in weights.state.items()}
    # A detector checkpoint into a detector, a bare FPN (no "backbone.") or a bare ResNet.
    best: dict[str, torch.Tensor] = {}
    for strip in ("", "backbone.", resnet_prefix(weights.state)):
        state = {k[len(strip) :]: v for k, v in weights.state.items() if k.startswith(strip)}
        if len(model_keys & set(state)) > len(model_keys & set(best)):
            best = state
    return best or dict(weights.state)


def load_weights(
    model: nn.Module,
    weights: Weights | str | os.PathLike,
    *,
    trusted: bool = False,
    skip_mismatched: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
) -> LoadReport:
    """Load a weights file of any supported source into ``model`` and report what happened.

    ImageNet files (torchvision, timm, Caffe2, Detectron2 backbone conversions) go into the
    model's ResNet wherever it sits (``backbone.bottom_up.`` in an R-CNN); detector checkpoints
    load by name.

    Args:
        model: a Detectron2 model, an FPN or a ResNet of this package (or Detectron2's).
        weights: a path, or :class:`weights.Weights` already read.
        trusted: allow arbitrary pickled objects (runs code from the file).
        skip_mismatched: name prefixes whose shape mismatches are skipped (e.g.
            ``roi_heads.box_predictor`` when fine-tuning on other classes); elsewhere a shape
            mismatch raises.
        log: where the report lines go (default: this module's logger at INFO).

    Returns:
        a :class:`LoadReport`.

    Raises:
        WeightsShapeError: a tensor's shape differs (names the tensor and both shapes).
    """
    if not isinstance(weights, Weights):
        weights = read_weights(weights, trusted=trusted)
    target = model.state_dict()
    state = _align(weights, set(target), model)
    report = LoadReport(weights.path, weights.source, unused=list(weights.unused))
    loadable = {}
    for name, value in state.items():
        if name not in target:
            # FrozenBN has no num_batches_tracked counter: nothing is lost.
            if not name.endswith("num_batches_tracked"):
                report.unused.append(name)
            continue
        if tuple(value.shape) != tuple(target[name].shape):
            if any(name.startswith(p) for p in skip_mismatched):
                report.skipped.append(f"{name} {tuple(value.shape)} -> {tuple(target[name].shape)}")
                continue
            raise WeightsShapeError(
                f"{weights.path}: {name} has shape {tuple(value.shape)} in the file but "
                f"{tuple(target[name].shape)} in the model. Check the architecture options "
                "(depth, groups, widths), or skip it on purpose (skip_mismatched / "
                "BACKBONES.SKIP_MISMATCHED, e.g. roi_heads.box_predictor for other classes)."
            )
        loadable[name] = value
    model.load_state_dict(loadable, strict=False)
    report.loaded = sorted(loadable)
    resnet = _resnet_module_prefix(model) or ""
    missing: dict[str, list[str]] = defaultdict(list)
    for name in target:
        if name not in loadable and not name.endswith("num_batches_tracked"):
            missing[_group(name)].append(name)
    report.missing = dict(missing)
    for group, names in report.missing.items():
        outside = not any(n.startswith(resnet) for n in names) if resnet else False
        report.expected_missing[group] = weights.is_backbone_only and outside
    for line in report.lines():
        (log or logger.info)(line)
    return report


# ---------------------------------------------------------------------------------------------
# Detectron2's checkpointer


class BackbonesCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` for every format of :mod:`backbones.weights`.

    Differences from Detectron2's: files are read without running code (``trusted`` opts
    out); ImageNet files of any source are renamed and placed into the model's ResNet; a shape
    mismatch raises (``skip_mismatched`` prefixes excepted) instead of being skipped with a
    warning; checkpoints are written atomically (a temporary file, then a rename) and carry the
    input settings of ``cfg`` under ``"backbones"``.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        cfg: CfgNode | None = None,
        trusted: bool | None = None,
        skip_mismatched: Sequence[str] | None = None,
        save_to_disk: bool | None = None,
        **checkpointables: Any,
    ) -> None:
        """
        Args:
            cfg: the config; gives ``BACKBONES.TRUST_WEIGHTS_FILE``,
                ``BACKBONES.SKIP_MISMATCHED`` and the input settings stored in checkpoints.
            trusted, skip_mismatched: override the config's.
            Others: as ``DetectionCheckpointer``.
        """
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.cfg = cfg
        options = cfg.BACKBONES if cfg is not None and "BACKBONES" in cfg else None
        self.trusted = (
            bool(options.TRUST_WEIGHTS_FILE) if trusted is None and options else bool(trusted)
        )
        if skip_mismatched is None:
            skip_mismatched = tuple(options.SKIP_MISMATCHED) if options else ()
        self.skip_mismatched = tuple(skip_mismatched)
        self.report: LoadReport | None = None

    def load(self, path: str, checkpointables: Sequence[str] | None = None) -> dict[str, Any]:
        local = path.split("?")[0]  # Detectron2 takes ?matching_heuristics=True after a path
        if path and not os.path.isfile(local) and "://" not in local:
            raise FileNotFoundError(f"Weights file not found: {path} (MODEL.WEIGHTS)")
        return super().load(path, checkpointables=checkpointables)

    def _load_file(self, filename: str) -> dict[str, Any]:
        weights = _READ_AHEAD.pop(_file_key(filename, self.trusted), None)
        if weights is not None and weights.is_backbone_only:
            # Read while resolving the config; an ImageNet file holds nothing but the model.
            return {"model": weights.state, "__backbones_weights__": weights}
        obj = read_file(filename, trusted=self.trusted)
        weights = weights_from_object(obj, filename)
        checkpoint = dict(obj) if isinstance(obj, Mapping) and "model" in obj else {}
        checkpoint["model"] = weights.state
        checkpoint["__backbones_weights__"] = weights
        return checkpoint

    def _load_model(self, checkpoint: dict[str, Any]) -> None:
        weights = checkpoint.pop("__backbones_weights__")
        checkpoint.pop("model")
        self.report = load_weights(
            self.model, weights, skip_mismatched=self.skip_mismatched, log=self.logger.info
        )
        return None

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        if self.cfg is not None:
            data["backbones"] = {"input": input_settings_of(self.cfg).as_dict()}
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


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


def _yaml_origins(path: str, origins: dict[str, str], prefix: str = "") -> None:
    with PathManager.open(path, "r") as f:
        data = yaml.safe_load(f) or {}
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
    url = cfg.MODEL.WEIGHTS
    if not url:
        return None
    source = source_of_url(url)
    if source is not None:
        return source, SOURCES[source].input
    path = url if os.path.isfile(url) else PathManager.get_local_path(url)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.WEIGHTS: weights file not found: {url}")
    weights = _read_ahead(path, cfg.BACKBONES.TRUST_WEIGHTS_FILE)
    return weights.origin, weights.input


def apply_input_settings(cfg: CfgNode, origins: Mapping[str, str]) -> list[str]:
    """Set the input settings of ``cfg`` (not frozen) from its ``MODEL.WEIGHTS``.

    With ``BACKBONES.INPUT_FROM_WEIGHTS "auto"``, each of ``INPUT.FORMAT``,
    ``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD`` and ``MODEL.RESNETS.STRIDE_IN_1X1`` that the user
    did not set (absent from ``origins``) takes the value of the weights' source; one the user
    set to another value is an error. ``"off"`` keeps the config as it is.

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
    found = weights_source(cfg) if mode == "auto" else None
    if not found or found[1] is None:
        return []
    source, settings = found
    changed, conflicts = [], []
    for key, attr in INPUT_KEYS.items():
        if key == "MODEL.RESNETS.STRIDE_IN_1X1" and _has_basic_blocks(cfg):
            continue  # basic blocks have no 1x1 conv: any value builds the same network
        wanted = getattr(settings, attr)
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
            f"{key} {_cli(getattr(settings, attr))}"
            for key, attr in INPUT_KEYS.items()
            if any(c.startswith(key + " ") for c in conflicts)
        )
        raise InputSettingsError(
            f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} ({source}) was trained with other input "
            "settings than the config's:\n  " + "\n  ".join(conflicts) + f"\nSet them "
            f"(e.g. on the command line: {fix}), or set BACKBONES.INPUT_FROM_WEIGHTS off to "
            "keep yours."
        )
    if changed:
        logger.info("Input settings of %s weights: %s", source, "; ".join(changed))
    return changed


def _has_basic_blocks(cfg: CfgNode) -> bool:
    depth = cfg.MODEL.RESNETS.DEPTH
    return depth in DEPTHS and DEPTHS[depth].block == "basic"


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
