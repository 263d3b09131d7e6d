"""Self-supervised ResNet checkpoints (MoCo v1/v2, MoCo v3, DenseCL, SwAV, DINO, and MoCo's and
OpenSelfSup's conversions to Detectron2): how each training script's file is recognised by its
content and renamed to Detectron2's ResNet names, keeping only the backbone that is evaluated.

Every one holds a torchvision ResNet (``conv1``, ``bn1``, ``layer1``..``layer4``) under its own
prefix, beside the parts that only serve pretraining: projection heads, predictors, prototypes,
momentum (key) encoders, queues, a DINO student. Those go to ``Renamed.unused``. What each
layout is was read from the publishers' code (facebookresearch/moco ``moco/builder.py`` and
``main_moco.py``, facebookresearch/moco-v3 ``moco/builder.py``, WXinlong/DenseCL
``openselfsup/models/densecl.py`` and ``tools/extract_backbone_weights.py``,
facebookresearch/swav ``src/resnet50.py``, facebookresearch/dino ``main_dino.py``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .naming import Renamed, rename_torchvision, signed_by, to_tensor, torchvision_names


def _rename_under(state: Mapping[str, Any], prefix: str) -> Renamed:
    """Rename the torchvision ResNet whose names start with ``prefix``; every other tensor of
    ``state`` (heads, the other encoder, queues) is unused, under its original name."""
    inner = rename_torchvision(
        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    )
    others = [name for name in state if not name.startswith(prefix)]
    return Renamed(inner.state, [prefix + n for n in inner.unused] + others, inner.facts)


# ---------------------------------------------------------------------------------------------
# MoCo v1 / v2 (facebookresearch/moco main_moco.py): {"epoch", "arch", "state_dict", "optimizer"};
# state_dict (DDP: "module." removed by unwrap) = encoder_q.* (query ResNet, fc = the head),
# encoder_k.* (momentum encoder), queue, queue_ptr. v2's --mlp makes fc [Linear, ReLU, Linear].

_MOCO = "encoder_q."


def _moco_file(state: Mapping[str, Any]) -> bool:
    return f"{_MOCO}layer1.0.conv1.weight" in state


def detect_moco_v1(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """MoCo's query/key encoders without v2's MLP head (v1's linear ``encoder_q.fc``)."""
    return _moco_file(state) and f"{_MOCO}fc.0.weight" not in state


def detect_moco_v2(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """MoCo's query/key encoders with v2's MLP head (``encoder_q.fc.0``/``fc.2``)."""
    return _moco_file(state) and f"{_MOCO}fc.0.weight" in state


def rename_moco(state: Mapping[str, Any]) -> Renamed:
    """The query encoder (``encoder_q.*`` but its fc head); the key encoder and queue unused."""
    return _rename_under(state, _MOCO)


# ---------------------------------------------------------------------------------------------
# MoCo v3 (facebookresearch/moco-v3 main_moco.py, ResNet-50): state_dict = base_encoder.*
# (fc = a projection MLP with BatchNorm1d), momentum_encoder.*, predictor.*.

_MOCO_V3 = "base_encoder."


def detect_moco_v3(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """MoCo v3's base encoder, a torchvision ResNet (its ViTs have other names)."""
    return f"{_MOCO_V3}layer1.0.conv1.weight" in state


def rename_moco_v3(state: Mapping[str, Any]) -> Renamed:
    """The base encoder but its projection MLP; momentum encoder and predictor unused."""
    return _rename_under(state, _MOCO_V3)


# ---------------------------------------------------------------------------------------------
# DenseCL (WXinlong/DenseCL, OpenSelfSup). Training checkpoints (mmcv: {"meta", "state_dict",
# "optimizer"}): encoder_q = [ResNet, DenseCLNeck(mlp, mlp2)] as encoder_q.0.* / encoder_q.1.*,
# encoder_k.* the same, backbone.* (encoder_q.0 again, by a second name), queue(2)(_ptr). The
# released files are tools/extract_backbone_weights.py's: {"state_dict": the ResNet's torchvision
# names, no fc, "author": "DenseCL"}, known by that signature (naming.SIGNATURES).

_DENSECL = "encoder_q.0."


def _densecl_training(state: Mapping[str, Any]) -> bool:
    return f"{_DENSECL}layer1.0.conv1.weight" in state and any(
        k.startswith("encoder_q.1.mlp2.") for k in state
    )


def detect_densecl(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """A DenseCL training checkpoint (its dense projection head ``encoder_q.1.mlp2``), or an
    extracted backbone signed ``author: DenseCL``."""
    if _densecl_training(state):
        return True
    return signed_by(meta) == "densecl" and torchvision_names(state)


def rename_densecl(state: Mapping[str, Any]) -> Renamed:
    """The query backbone (``encoder_q.0.*``) of a training checkpoint, or the extracted one."""
    return _rename_under(state, _DENSECL) if _densecl_training(state) else rename_torchvision(state)


# ---------------------------------------------------------------------------------------------
# SwAV (facebookresearch/swav src/resnet50.py): torchvision's names plus projection_head.* and
# prototypes.weight (prototypes.prototypesN.weight with several heads: DeepCluster-v2, whose
# main_deepclusterv2.py builds the same class); both the bare released state dict and the
# training checkpoint ({"epoch", "state_dict", "optimizer"}) carry the DDP "module." prefix.


def detect_swav(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """torchvision's ResNet names at the top level beside SwAV's prototypes."""
    return torchvision_names(state) and any(k.startswith("prototypes.") for k in state)


# rename: naming.rename_torchvision (projection_head.* and prototypes.* have no counterpart).


# ---------------------------------------------------------------------------------------------
# DINO (facebookresearch/dino main_dino.py): {"student", "teacher", "optimizer", "epoch", "args",
# "dino_loss"[, "fp16_scaler"]}; student and teacher are MultiCropWrapper(backbone, DINOHead)
# state dicts (backbone.* without fc, head.mlp.*, head.last_layer.weight_g/_v), "module."-
# prefixed where DDP wrapped them (always the student; the teacher of a network with BatchNorm).
# The teacher is the network DINO evaluates (eval_linear.py --checkpoint_key teacher).

_DINO = "backbone."


def _dino_part(state: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    """The student's or teacher's state dict, ``module.`` removed; None where there is none."""
    part = state.get(key)
    if not isinstance(part, Mapping):
        return None
    if part and all(k.startswith("module.") for k in part):
        return {k[len("module.") :]: v for k, v in part.items()}
    return dict(part)


def detect_dino(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """A DINO checkpoint with a torchvision ResNet as the teacher's backbone."""
    teacher, student = _dino_part(state, "teacher"), _dino_part(state, "student")
    return (
        student is not None and teacher is not None and f"{_DINO}layer1.0.conv1.weight" in teacher
    )


def rename_dino(state: Mapping[str, Any]) -> Renamed:
    """The teacher's backbone; the teacher's head and the whole student are unused (named
    ``teacher.head.*``, ``student.*``)."""
    teacher, student = _dino_part(state, "teacher") or {}, _dino_part(state, "student") or {}
    kept = _rename_under(teacher, _DINO)
    unused = [f"teacher.{n}" for n in kept.unused] + [f"student.{n}" for n in student]
    return Renamed(kept.state, unused, kept.facts)


# ---------------------------------------------------------------------------------------------
# MoCo's / OpenSelfSup's detection/convert-pretrain-to-detectron2.py: {"model": Detectron2 names
# (numpy), "__author__": "MOCO" | "OpenSelfSup", "matching_heuristics": True}. MoCo's script
# keeps the query encoder's head as stem.fc.* (every name without "layer" goes under "stem.").

_DETECTRON2_RESNET = re.compile(r"(stem\.conv1|res[2-5]\.\d+)\.")


def detect_selfsup_detectron2(state: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """Detectron2 names signed by MoCo's or OpenSelfSup's converter (``__author__``)."""
    return signed_by(meta) == "selfsup_detectron2" and "stem.conv1.weight" in state


def rename_selfsup_detectron2(state: Mapping[str, Any]) -> Renamed:
    """Detectron2 names already: the ResNet's tensors kept, the head (``stem.fc.*``) unused."""
    kept = {k: to_tensor(v) for k, v in state.items() if _DETECTRON2_RESNET.match(k)}
    return Renamed(kept, [k for k in state if k not in kept], {})


# ---------------------------------------------------------------------------------------------
# Published files: (source, address, depth, recipe), from the repositories' READMEs (MoCo v3's
# CONFIG.md). sources.PUBLISHED_WEIGHTS makes a record of each.

_FAIR = "https://dl.fbaipublicfiles.com/"
_MOCO_URL = _FAIR + "moco/moco_checkpoints/"
_DENSECL_URL = "https://huggingface.co/xinlongwang/DenseCL/resolve/main/"

SELF_SUPERVISED_FILES: tuple[tuple[str, str, int, str], ...] = (
    ("moco_v1", f"{_MOCO_URL}moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar", 50, "MoCo v1 200ep"),
    ("moco_v2", f"{_MOCO_URL}moco_v2_200ep/moco_v2_200ep_pretrain.pth.tar", 50, "MoCo v2 200ep"),
    ("moco_v2", f"{_MOCO_URL}moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar", 50, "MoCo v2 800ep"),
    *(
        ("moco_v3", f"{_FAIR}moco-v3/r-50-{n}ep/r-50-{n}ep.pth.tar", 50, f"MoCo v3 {n}ep")
        for n in (100, 300, 1000)
    ),
    # SwAV's README: its ResNet-50s (not the wider RN50-w2/w4/w5) and DeepCluster-v2's.
    *(
        ("swav", f"{_FAIR}deepcluster/{name}_pretrain.pth.tar", 50, recipe)
        for name, recipe in (
            ("swav_800ep", "SwAV 800ep"),
            ("swav_400ep", "SwAV 400ep"),
            ("swav_200ep", "SwAV 200ep"),
            ("swav_100ep", "SwAV 100ep"),
            ("swav_200ep_bs256", "SwAV 200ep, batch 256"),
            ("swav_400ep_bs256", "SwAV 400ep, batch 256"),
            ("swav_400ep_2x224", "SwAV 400ep, 2x224 crops"),
            ("deepclusterv2_800ep", "DeepCluster-v2 800ep"),
            ("deepclusterv2_400ep", "DeepCluster-v2 400ep"),
            ("deepclusterv2_400ep_2x224", "DeepCluster-v2 400ep, 2x224 crops"),
        )
    ),
    # The backbone-only file is a torchvision state dict without fc: read, it is "torchvision"
    # (same input settings); the address alone is known as DINO's.
    ("dino", f"{_FAIR}dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth", 50, "DINO"),
    (
        "dino",
        f"{_FAIR}dino/dino_resnet50_pretrain/dino_resnet50_pretrain_full_checkpoint.pth",
        50,
        "DINO",
    ),
    ("dino", f"{_FAIR}dino/example_runs_logs/dino_rn50_checkpoint.pth", 50, "DINO 100ep"),
    *(
        ("densecl", f"{_DENSECL_URL}densecl_r{depth}_{data}.pth?download=true", depth, recipe)
        for depth, data, recipe in (
            (50, "coco_800ep", "DenseCL COCO 800ep"),
            (50, "coco_1600ep", "DenseCL COCO 1600ep"),
            (50, "imagenet_200ep", "DenseCL ImageNet 200ep"),
            (101, "imagenet_200ep", "DenseCL ImageNet 200ep"),
        )
    ),
)
