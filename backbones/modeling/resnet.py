"""The ResNet / ResNeXt backbone (He et al., 2015; Xie et al., 2017), a Detectron2 ``ResNet``."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from detectron2.layers import CNNBlockBase
from detectron2.modeling.backbone import ResNet as D2ResNet
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import check_choice
from ..specs import STAGE_NAMES
from .spec import ResNetSpec

# BACKBONES.MEMORY_FORMAT: NHWC (faster convolutions on CPU and tensor cores) or NCHW.
MEMORY_FORMATS = ("channels_last", "contiguous")
FEATURE_NAMES = ("stem",) + STAGE_NAMES


class ResNet(D2ResNet):
    """A stem and residual stages ``res2``..``res5``, returning the features in ``out_features``.

    A Detectron2 ``ResNet`` to every check Detectron2 code makes: ``isinstance``, ``stem``,
    ``stages`` / ``stage_names``, ``num_classes`` (None: no classifier), ``freeze()``,
    ``make_stage``; built by Detectron2's constructor, with checked options, a memory format and a
    forward that TorchScript compiles without renaming keys.

    Args:
        stem: the stem block (its ``stride`` and ``out_channels`` are read).
        stages: the blocks of each stage, res2 first; stages after the last one in
            ``out_features`` are not built into the module (they would get no gradient).
        out_features: names among ``stem``, ``res2``..``res5``.
        freeze_at: freeze the stem (1), and res2 (2), ..., res5 (5); 0 freezes nothing. Frozen
            blocks get ``requires_grad=False`` and their BatchNorms become FrozenBatchNorm2d.
        memory_format: ``"channels_last"`` or ``"contiguous"``, for weights and activations.
        grad_checkpointing: stage names (``res2``..``res5``) whose blocks are recomputed in the
            backward pass instead of keeping their activations (training only), or True for all.
        spec: the architecture the stem and stages were built from (``make_resnet`` gives it),
            kept as ``self.spec``: a plain attribute, not in the state dict; None if unknown.
    """

    # TorchScript: ``stages`` is Detectron2's Python list of the stage modules (already
    # registered as res2..res5); scripting it would add ``stages.N.*`` keys. ``spec`` is a
    # record for Python code only.
    __jit_ignored_attributes__ = ["stages", "grad_checkpointing", "spec"]

    def __init__(
        self,
        stem: CNNBlockBase,
        stages: Sequence[Sequence[CNNBlockBase]],
        *,
        out_features: Sequence[str] = STAGE_NAMES,
        freeze_at: int = 0,
        memory_format: str = "channels_last",
        grad_checkpointing: bool | Sequence[str] = False,
        spec: ResNetSpec | None = None,
    ):
        if not out_features:
            raise ValueError("out_features is empty; choose among " + ", ".join(FEATURE_NAMES))
        for name in out_features:
            check_choice("out_features", name, FEATURE_NAMES[: len(stages) + 1])
        check_choice("freeze_at", freeze_at, range(len(stages) + 2))
        check_choice("memory_format", memory_format, MEMORY_FORMATS)
        if isinstance(grad_checkpointing, bool):
            grad_checkpointing = STAGE_NAMES if grad_checkpointing else ()
        for name in grad_checkpointing:
            check_choice("grad_checkpointing", name, STAGE_NAMES[: len(stages)])
        # Registers stem, res2.. (only up to the last stage in out_features), in that order: the
        # state-dict prefixes, and the order forward() runs the children in; then freezes.
        super().__init__(
            stem,
            [list(blocks) for blocks in stages],
            out_features=list(out_features),
            freeze_at=freeze_at,
        )
        self.memory_format = memory_format
        self.spec = spec
        self.grad_checkpointing = [name for name in self.stage_names if name in grad_checkpointing]
        if memory_format == "channels_last":
            self.to(memory_format=torch.channels_last)

    def __prepare_scriptable__(self) -> "ResNet":
        """TorchScript takes this module as it is: its forward scripts without renaming keys.
        (Importing ``detectron2.export`` patches Detectron2's ResNet to script a copy with
        ``stages`` in a ``ModuleList``, which renames the state-dict keys.)"""
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x: images ``(N, C, H, W)``.

        Returns:
            the features named in ``out_features``: ``stem`` (stride 4), ``res2`` (4), ``res3``
            (8), ``res4`` (16), ``res5`` (32; 16 with res5 dilation).
        """
        if x.dim() != 4:
            raise ValueError(f"ResNet takes images of shape (N, C, H, W), got {x.dim()} dims")
        if self.memory_format == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        outputs: dict[str, torch.Tensor] = {}
        # stem, res2, ...: a loop TorchScript unrolls (it cannot iterate Detectron2's list).
        for name, module in self.named_children():
            if torch.jit.is_scripting():
                x = module(x)
            else:
                x = self._run(name, module, x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    @torch.jit.unused
    def _run(self, name: str, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``stage(x)``; for a stage in ``grad_checkpointing`` when training with autograd, each
        block's activations are recomputed in the backward pass instead of kept."""
        if name not in self.grad_checkpointing or not (self.training and torch.is_grad_enabled()):
            return stage(x)
        for block in stage:
            x = checkpoint(
                block,
                x,
                use_reentrant=False,
                context_fn=lambda block=block: (contextlib.nullcontext(), _same_statistics(block)),
            )
        return x


@contextlib.contextmanager
def _same_statistics(module: nn.Module) -> Iterator[None]:
    """Restore the running statistics of ``module``'s batch norms after the recomputation of a
    checkpointed block, so that they are updated once per step, as without checkpointing."""
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    saved = [
        [b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
