"""Detectron2's ``DetectionCheckpointer`` for every weight format of :mod:`backbones.weights`.

:class:`BackbonesCheckpointer` reads files safely, places ImageNet weights of any source into the
model's ResNet with a short report (:func:`backbones.weights.load_weights`), refuses shape
mismatches, writes checkpoints atomically, and stores the config's input settings in them. An
address (a published file's, torchvision's or Detectron2's) is read from Detectron2's download
cache, downloaded into it first where needed.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from typing import Any, Mapping, Sequence

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from torch import nn

from .config.input_settings import input_settings_of, take_read_ahead
from .config.weights_file import fetch_weights
from .errors import DivergenceError
from .weights import (
    LoadReport,
    UnsafeWeightsError,
    WeightsFormatError,
    atomic_write,
    load_weights,
    read_file,
    weights_from_object,
)

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Detectron2's checkpointer


class UnreadableCheckpointError(WeightsFormatError):
    """A file that is not a readable checkpoint at all: empty, truncated, not torch's format."""


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
        metadata: Mapping[str, Any] | None = None,
        **checkpointables: Any,
    ) -> None:
        """
        Args:
            cfg: the config; gives ``BACKBONES.TRUST_WEIGHTS_FILE``,
                ``BACKBONES.SKIP_MISMATCHED`` and the input settings stored in checkpoints.
            trusted, skip_mismatched: override the config's.
            metadata: more entries stored beside the input settings under ``"backbones"``
                (e.g. ``{"architecture": ...}``, which ``read_weights`` reads back).
            Others: as ``DetectionCheckpointer``.
        """
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.cfg = cfg
        self.metadata = dict(metadata or {})
        options = cfg.BACKBONES if cfg is not None and "BACKBONES" in cfg else None
        self.trusted = (
            bool(options.TRUST_WEIGHTS_FILE) if trusted is None and options else bool(trusted)
        )
        if skip_mismatched is None:
            skip_mismatched = tuple(options.SKIP_MISMATCHED) if options else ()
        self.skip_mismatched = tuple(skip_mismatched)
        self.report: LoadReport | None = None

    def load(self, path: str, checkpointables: Sequence[str] | None = None) -> dict[str, Any]:
        # Detectron2 takes ?matching_heuristics=True after a path.
        local, sep, query = path.partition("?")
        if local and not os.path.isfile(local):
            if "://" not in local:
                raise FileNotFoundError(f"Weights file not found: {path} (MODEL.WEIGHTS)")
            # An address: the copy in Detectron2's download cache, or a download into it
            # through its PathManager; unreachable, one WeightsUnavailableError.
            local = fetch_weights(local)
            self.logger.info("Weights %s: the copy at %s", path, local)
            path = local + sep + query
        return super().load(path, checkpointables=checkpointables)

    def _load_file(self, filename: str) -> dict[str, Any]:
        weights = take_read_ahead(filename, self.trusted)
        if weights is not None and weights.is_backbone_only:
            # Read while resolving the config; an ImageNet file holds nothing but the model.
            return {"model": weights.state, "__backbones_weights__": weights}
        try:
            obj = read_file(filename, trusted=self.trusted)
        except UnsafeWeightsError:
            raise
        except WeightsFormatError as error:
            raise UnreadableCheckpointError(str(error)) from error
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

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Detectron2's: with ``resume`` and a checkpoint in ``save_dir``, continue from it, else
        load ``path`` as weights. A latest checkpoint that cannot be read (truncated, empty,
        not a checkpoint) is reported by name and the one before it is used, and so on.

        Raises:
            UnreadableCheckpointError: no checkpoint in ``save_dir`` can be read, naming them.
        """
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        candidates = self.checkpoint_files()
        failures: list[str] = []
        for candidate in candidates:
            try:
                checkpoint = self.load(candidate)
            except UnreadableCheckpointError as error:
                # Detectron2's load() clears this only when it returns.
                self._parsed_url_during_load = None
                failures.append(candidate)
                self.logger.warning("Cannot resume from it: %s", error)
                continue
            if failures:
                self.logger.warning(
                    "Resumed from %s, the newest readable checkpoint; unreadable: %s",
                    candidate,
                    ", ".join(failures),
                )
            return checkpoint
        raise UnreadableCheckpointError(
            f"None of the checkpoints in {self.save_dir} can be read ({', '.join(failures)}); "
            "start without --resume, or in a new OUTPUT_DIR"
        )

    def checkpoint_files(self) -> list[str]:
        """The checkpoints of ``save_dir``, newest first: the one ``last_checkpoint`` names,
        then ``model_final.pth``, then ``model_<iteration>.pth`` by falling iteration."""
        if not self.save_dir or not os.path.isdir(self.save_dir):
            return []
        named = self.get_checkpoint_file() if self.has_checkpoint() else ""
        found = []  # (final first, then by falling iteration), name
        for name in os.listdir(self.save_dir):
            match = _CHECKPOINT_NAME.fullmatch(name)
            if match:
                number = match.group(1)
                found.append(((0, 0) if number is None else (1, -int(number)), name))
        files = [os.path.join(self.save_dir, name) for _, name in sorted(found)]
        if named:
            files = [named] + [f for f in files if os.path.abspath(f) != os.path.abspath(named)]
        return files

    def save(self, name: str, **kwargs: Any) -> None:
        # Every process checks (DDP keeps their weights equal), so all stop together.
        _check_finite(self.model, name, kwargs.get("iteration"))
        if not self.save_dir or not self.save_to_disk:
            return
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        backbones = dict(self.metadata)
        if self.cfg is not None:
            backbones["input"] = input_settings_of(self.cfg).as_dict()
        if backbones:
            data["backbones"] = backbones
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        try:
            atomic_write(path, lambda f: torch.save(data, f))
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise DiskFullError(
                _disk_full_message(path, data, self.get_checkpoint_file())
            ) from None
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))


class DiskFullError(OSError):
    """A checkpoint that did not fit on the disk (the previous one is kept whole)."""


def _disk_full_message(path: str, data: dict[str, Any], kept: str) -> str:
    """``kept``: the checkpoint ``last_checkpoint`` names ("" for none)."""
    free = shutil.disk_usage(os.path.dirname(path) or ".").free
    need = sum(t.numel() * t.element_size() for t in _tensors(data))
    return (
        f"cannot write the checkpoint {path}: the disk is full ({free / 2**20:.0f} MiB free there; "
        f"the checkpoint needs about {need / 2**20:.0f} MiB). "
        + (f"The previous checkpoint {kept} is whole: free space, then --resume continues "
           "from it" if kept else "Free space and start again")
    )  # fmt: skip


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


# Checkpoints a training writes: model_final.pth, model_0004999.pth (group 1: the iteration).
_CHECKPOINT_NAME = re.compile(r"model_(?:final|(\d+))\.pth")


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> str | None:
    """``a, b, c and 4 more``: the floating-point tensors of ``state`` (a state dict) that
    hold a NaN or an infinity, or ``None`` when all are finite."""
    bad = [
        key
        for key, value in state.items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if not bad:
        return None
    return ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")


def _check_finite(model: nn.Module, name: str, iteration: int | None) -> None:
    bad = nonfinite_tensors(model.state_dict())
    if bad is not None:
        raise DivergenceError(
            -1 if iteration is None else iteration,
            f"the weights are no longer finite ({bad}), after a finite loss: an infinite "
            f"gradient. {name}.pth was not saved",
        )
