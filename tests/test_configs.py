"""Every YAML under configs/ merges into a Detectron2 cfg and builds its model on CPU; the COCO
leaves build what their names say, set the input settings of their weights, and equal Detectron2's
model-zoo recipe of the same model key for key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from detectron2 import model_zoo
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import Res5ROIHeads

from backbones import BLOCK_TYPES, DEPTHS, FPN, SOURCES, ResNet, load_cfg
from backbones.config import architecture_conflicts, input_settings
from backbones.weights import published_weights, source_of_url

from helpers import flatten

CONFIG_DIR = Path(__file__).parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
LEAVES = [p for p in CONFIGS if not p.name.startswith("Base-")]
ZOO_DIR = Path(model_zoo.get_config_file("Base-RCNN-FPN.yaml")).parent

# {detector}_{preset}[_{design}][_{schedule}]: the COCO configs (1x without a schedule, FPN
# without a design); the shapes configs (`mrcnn_r18_shapes`) are named for their data instead.
NAME = re.compile(
    r"(?P<detector>frcnn|mrcnn|retinanet)_(?P<preset>r\d+|x101_32x8d)"
    r"(?:_(?P<design>c4|dc5))?(?:_(?P<schedule>3x))?"
)
COCO = [p for p in LEAVES if NAME.fullmatch(p.stem)]
LADDER = (18, 34, 50, 101, 152)

# Our config -> Detectron2's model-zoo config of the same model. Each pair is equal key for key but
# MODEL.BACKBONE.NAME (ours: "backbones_" + theirs) and our BACKBONES node.
ZOO = {
    "Base-RCNN-FPN.yaml": "Base-RCNN-FPN.yaml",
    "Base-RCNN-C4.yaml": "Base-RCNN-C4.yaml",
    "Base-RCNN-DilatedC5.yaml": "Base-RCNN-DilatedC5.yaml",
    "frcnn_r50.yaml": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "frcnn_r50_3x.yaml": "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
    "frcnn_r101_3x.yaml": "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml",
    "frcnn_x101_32x8d_3x.yaml": "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml",
    "frcnn_r50_c4.yaml": "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
    "frcnn_r50_c4_3x.yaml": "COCO-Detection/faster_rcnn_R_50_C4_3x.yaml",
    "frcnn_r101_c4_3x.yaml": "COCO-Detection/faster_rcnn_R_101_C4_3x.yaml",
    "frcnn_r50_dc5.yaml": "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml",
    "frcnn_r50_dc5_3x.yaml": "COCO-Detection/faster_rcnn_R_50_DC5_3x.yaml",
    "frcnn_r101_dc5_3x.yaml": "COCO-Detection/faster_rcnn_R_101_DC5_3x.yaml",
    "mrcnn_r50.yaml": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "mrcnn_r50_3x.yaml": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
    "mrcnn_r101_3x.yaml": "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml",
    "mrcnn_x101_32x8d_3x.yaml": "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml",
    "mrcnn_r50_c4.yaml": "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
    "mrcnn_r101_c4_3x.yaml": "COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x.yaml",
    "Base-RetinaNet.yaml": "Base-RetinaNet.yaml",
    "retinanet_r50.yaml": "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
    "retinanet_r50_3x.yaml": "COCO-Detection/retinanet_R_50_FPN_3x.yaml",
    "retinanet_r101_3x.yaml": "COCO-Detection/retinanet_R_101_FPN_3x.yaml",
}

# The PASCAL VOC configs (the paper's Table 7): frcnn_{preset}[_c4]_voc over a Base-VOC-*.yaml. The
# zoo has Detectron2's R-50 recipes only; ours at other depths are those with the depth, weights and
# the weights' input settings changed.
VOC_NAME = re.compile(r"frcnn_(?P<preset>r(?P<depth>\d+))(?:_(?P<design>c4))?_voc")
VOC = [p for p in LEAVES if VOC_NAME.fullmatch(p.stem)]
VOC_ZOO = {
    "frcnn_r50_voc.yaml": "PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml",
    "frcnn_r50_c4_voc.yaml": "PascalVOC-Detection/faster_rcnn_R_50_C4.yaml",
}
# The keys a VOC config at another depth may set otherwise than the zoo's R-50 recipe.
WEIGHT_KEYS = {
    "MODEL.WEIGHTS",
    "MODEL.RESNETS.DEPTH",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",  # basic blocks: res2 is 64 wide
    "MODEL.RESNETS.STRIDE_IN_1X1",
    "MODEL.PIXEL_MEAN",
    "MODEL.PIXEL_STD",
    "INPUT.FORMAT",
}
# ImageNet weights of each depth: MSRA's where Detectron2 has them, else torchvision's own files.
VOC_WEIGHTS = {
    18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
    50: "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    101: "detectron2://ImageNetPretrained/MSRA/R-101.pkl",
    152: "https://download.pytorch.org/models/resnet152-394f9c45.pth",
}

# What each schedule of Detectron2's zoo trains for (batch 16): (SOLVER.STEPS, SOLVER.MAX_ITER).
SCHEDULES = {"1x": ((60000, 80000), 90000), "3x": ((210000, 250000), 270000)}


def zoo_name(stem: str) -> str:
    """The model-zoo file of the model our COCO config ``stem`` names (whether or not the zoo
    has it): frcnn_r50_c4_3x -> COCO-Detection/faster_rcnn_R_50_C4_3x.yaml."""
    m = NAME.fullmatch(stem)
    folder, detector = {
        "frcnn": ("COCO-Detection", "faster_rcnn"),
        "mrcnn": ("COCO-InstanceSegmentation", "mask_rcnn"),
        "retinanet": ("COCO-Detection", "retinanet"),
    }[m["detector"]]
    preset = re.sub(r"^([rx])", lambda kind: kind[1].upper() + "_", m["preset"])  # X_101_32x8d
    design = {"c4": "C4", "dc5": "DC5", None: "FPN"}[m["design"]]
    return f"{folder}/{detector}_{preset}_{design}_{m['schedule'] or '1x'}.yaml"


def test_the_configs_users_start_from_exist():
    names = {p.stem for p in LEAVES}
    assert {"frcnn_r50", "frcnn_r101", "mrcnn_r50", "mrcnn_r101", "mrcnn_r18_shapes"} <= names
    assert "retinanet_r50" in names


def test_the_depth_ladder_and_the_papers_designs_exist():
    names = {p.stem for p in COCO}
    ladder = {f"frcnn_r{depth}{schedule}" for depth in LADDER for schedule in ("", "_3x")}
    assert ladder <= names, f"missing from the ladder: {sorted(ladder - names)}"
    designs = {"frcnn_r50_c4", "frcnn_r50_c4_3x", "frcnn_r101_c4_3x", "mrcnn_r50_c4"}
    designs |= {"mrcnn_r101_c4_3x", "frcnn_r50_dc5", "frcnn_r50_dc5_3x", "frcnn_r101_dc5_3x"}
    designs |= {"frcnn_x101_32x8d_3x", "mrcnn_r50_3x", "mrcnn_r101_3x", "mrcnn_x101_32x8d_3x"}
    assert designs <= names, f"missing: {sorted(designs - names)}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_merges_and_builds_on_cpu(path):
    cfg = load_cfg(str(path), ["MODEL.DEVICE", "cpu"])
    if path.name.startswith(("Base-RCNN", "Base-RetinaNet", "Base-VOC")):
        # The base alone has no weights: with FrozenBN and FREEZE_AT 2 that deserves a warning.
        with pytest.warns(UserWarning, match="no MODEL.WEIGHTS"):
            model = build_model(cfg)
    else:
        model = build_model(cfg)
    assert cfg.MODEL.BACKBONE.NAME.startswith("backbones_")
    roi_heads = getattr(model, "roi_heads", None)  # None: RetinaNet, one stage
    if isinstance(roi_heads, Res5ROIHeads):  # C4: res5 is the per-RoI head
        assert isinstance(model.backbone, ResNet)
        assert list(model.backbone.output_shape()) == ["res4"]
        # res5's width as the box predictor takes it (MoCo's head ends res5 with a norm)
        res5 = model.roi_heads.box_predictor.cls_score.in_features
    else:
        resnet = model.backbone.bottom_up if isinstance(model.backbone, FPN) else model.backbone
        assert isinstance(resnet, ResNet)
        res5 = resnet.output_shape()["res5"].channels
    assert res5 == (512 if cfg.MODEL.RESNETS.DEPTH < 50 else 2048)
    assert hasattr(roi_heads, "mask_head") == cfg.MODEL.MASK_ON
    assert all(p.device == torch.device("cpu") for p in model.parameters())


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: p.name)
def test_leaf_configs_stay_short_and_set_weight_dependent_inputs(path):
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert len(lines) <= 12, f"{path.name}: leaves override a Base-*.yaml in a few lines"
    # As written: the leaf itself must set what its weights need.
    cfg = load_cfg(str(path), ["BACKBONES.INPUT_FROM_WEIGHTS", "off"])
    if not cfg.MODEL.WEIGHTS:
        return  # from scratch: any input settings
    source = source_of_url(cfg.MODEL.WEIGHTS)
    assert source is not None, f"{path.name}: {cfg.MODEL.WEIGHTS} is no published address"
    wanted = SOURCES[source].input
    assert cfg.INPUT.FORMAT == wanted.format
    assert list(cfg.MODEL.PIXEL_MEAN) == pytest.approx(list(wanted.pixel_mean))
    assert list(cfg.MODEL.PIXEL_STD) == pytest.approx(list(wanted.pixel_std))
    if BLOCK_TYPES[DEPTHS[cfg.MODEL.RESNETS.DEPTH].block].strided_1x1:  # else no 1x1 to stride
        assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 == wanted.stride_in_1x1
    if "WEIGHTS:" in path.read_text():  # and says where its weights come from
        comments = " ".join(line for line in lines if line.lstrip().startswith("#"))
        assert source in comments.lower(), f"{path.name}: name the weights' source ({source})"


@pytest.mark.parametrize("path", LEAVES, ids=lambda p: p.name)
def test_weights_are_a_published_file_of_the_configs_network(path, monkeypatch):
    def no_download(url):
        raise AssertionError(f"{path.name}: load_cfg fetched {url}")

    monkeypatch.setattr(input_settings, "fetch_weights", no_download)
    written = load_cfg(str(path), ["BACKBONES.INPUT_FROM_WEIGHTS", "off"])  # as written
    if not written.MODEL.WEIGHTS:
        return  # from scratch
    # A file that really exists: Detectron2's ImageNet files or torchvision's own.
    weights = published_weights(written.MODEL.WEIGHTS)
    assert weights is not None, f"{path.name}: {written.MODEL.WEIGHTS} is no published file"
    # It holds the config's network, stride placement included: nothing to change, nothing to
    # download to know it.
    settings = SOURCES[weights.source].input
    assert architecture_conflicts(written, weights.architecture, settings) == []
    auto, as_written = flatten(load_cfg(str(path))), flatten(written)
    del auto["BACKBONES.INPUT_FROM_WEIGHTS"], as_written["BACKBONES.INPUT_FROM_WEIGHTS"]
    assert auto == as_written


@pytest.mark.parametrize("path", COCO, ids=lambda p: p.name)
def test_coco_configs_build_what_their_names_say(path):
    m = NAME.fullmatch(path.stem)
    cfg = load_cfg(str(path))
    r = cfg.MODEL.RESNETS
    assert cfg.MODEL.MASK_ON == (m["detector"] == "mrcnn")
    # The preset: the depth (and ResNeXt's groups), and ImageNet weights of that network.
    weights = published_weights(cfg.MODEL.WEIGHTS)
    assert weights is not None, f"{cfg.MODEL.WEIGHTS} is no published file"
    groups, width = (32, 8) if m["preset"] == "x101_32x8d" else (1, 64)
    assert (r.DEPTH, r.NUM_GROUPS, r.WIDTH_PER_GROUP) == (int(m["preset"][1:4]), groups, width)
    assert (weights.depth, weights.num_groups, weights.width_per_group) == (r.DEPTH, groups, width)
    # The design: FPN, C4 (res5 runs per RoI in Res5ROIHeads) or DC5 (dilated res5); RetinaNet's
    # FPN (P3-P7) feeds its dense head, with no RoI heads.
    fpn = m["design"] is None
    heads, features, dilation = {
        None: ("StandardROIHeads", ["p2", "p3", "p4", "p5"], 1),
        "c4": ("Res5ROIHeads", ["res4"], 1),
        "dc5": ("StandardROIHeads", ["res5"], 2),
    }[m["design"]]
    if m["detector"] == "retinanet":
        assert cfg.MODEL.BACKBONE.NAME == "backbones_build_retinanet_resnet_fpn_backbone"
        assert list(cfg.MODEL.RETINANET.IN_FEATURES) == ["p3", "p4", "p5", "p6", "p7"]
    else:
        assert cfg.MODEL.BACKBONE.NAME == f"backbones_build_resnet{'_fpn' if fpn else ''}_backbone"
        assert cfg.MODEL.ROI_HEADS.NAME == heads
        assert list(cfg.MODEL.ROI_HEADS.IN_FEATURES) == features
    assert r.RES5_DILATION == dilation
    if m["design"] is not None:
        assert list(r.OUT_FEATURES) == features
    # The schedule: Detectron2's 1x or 3x at batch 16.
    steps, max_iter = SCHEDULES[m["schedule"] or "1x"]
    assert (tuple(cfg.SOLVER.STEPS), cfg.SOLVER.MAX_ITER) == (steps, max_iter)
    assert cfg.SOLVER.IMS_PER_BATCH == 16


def test_every_config_with_a_zoo_counterpart_is_compared():
    in_zoo = {p.name for p in COCO if (ZOO_DIR / zoo_name(p.stem)).is_file()}
    assert in_zoo <= set(ZOO), f"add to ZOO: {sorted(in_zoo - set(ZOO))}"
    # and each pair of ZOO is the model its name says
    assert {zoo_name(Path(ours).stem) for ours in ZOO if NAME.fullmatch(Path(ours).stem)} == {
        zoo for ours, zoo in ZOO.items() if not ours.startswith("Base-")
    }


@pytest.mark.parametrize("ours, zoo", [*ZOO.items(), *VOC_ZOO.items()], ids=[*ZOO, *VOC_ZOO])
def test_config_equals_the_model_zoo_recipe(ours, zoo):
    # Both composed the same way: Detectron2's defaults, BACKBONES, the YAML chain, and the
    # input settings of their weights for keys the YAMLs leave unset.
    mine = flatten(load_cfg(str(CONFIG_DIR / ours)))
    theirs = flatten(load_cfg(model_zoo.get_config_file(zoo)))
    assert mine.pop("MODEL.BACKBONE.NAME") == "backbones_" + theirs.pop("MODEL.BACKBONE.NAME")
    keys = sorted(k for k in mine.keys() | theirs.keys() if not k.startswith("BACKBONES."))
    missing = "(absent)"
    differ = [
        f"{k}: ours {mine.get(k, missing)!r}, zoo {theirs.get(k, missing)!r}"
        for k in keys
        if mine.get(k, missing) != theirs.get(k, missing)
    ]
    assert not differ, f"{ours} differs from the zoo's {zoo}:\n  " + "\n  ".join(differ)


def test_the_voc_ladder_exists_and_is_compared_with_the_zoo():
    names = {p.stem for p in VOC}
    wanted = {f"frcnn_r{depth}_voc" for depth in LADDER} | {"frcnn_r50_c4_voc", "frcnn_r101_c4_voc"}
    assert wanted <= names, f"missing: {sorted(wanted - names)}"
    voc_zoo = Path(model_zoo.get_config_file(VOC_ZOO["frcnn_r50_voc.yaml"])).parent
    in_zoo = set()
    for p in VOC:
        m = VOC_NAME.fullmatch(p.stem)
        zoo = f"faster_rcnn_R_{m['depth']}_{'C4' if m['design'] else 'FPN'}.yaml"
        if (voc_zoo / zoo).is_file():
            in_zoo.add(p.name)
            assert VOC_ZOO.get(p.name) == f"PascalVOC-Detection/{zoo}"
    assert in_zoo == {"frcnn_r50_voc.yaml", "frcnn_r50_c4_voc.yaml"}


@pytest.mark.parametrize("path", VOC, ids=lambda p: p.name)
def test_voc_configs_are_the_zoo_recipe_but_the_depth_and_its_weights(path):
    m = VOC_NAME.fullmatch(path.stem)
    depth = int(m["depth"])
    zoo = "PascalVOC-Detection/faster_rcnn_R_50_" + ("C4" if m["design"] else "FPN") + ".yaml"
    # As written (no input settings filled in from the weights, nothing downloaded).
    off = ["BACKBONES.INPUT_FROM_WEIGHTS", "off"]
    mine = flatten(load_cfg(str(path), off))
    theirs = flatten(load_cfg(model_zoo.get_config_file(zoo), off))
    assert mine.pop("MODEL.BACKBONE.NAME") == "backbones_" + theirs.pop("MODEL.BACKBONE.NAME")
    keys = {k for k in mine.keys() | theirs.keys() if not k.startswith("BACKBONES.")}
    differ = {k for k in keys if mine.get(k) != theirs.get(k)}
    extra = sorted(differ - WEIGHT_KEYS)
    assert not extra, f"{path.name} differs from {zoo} in {extra}"
    assert (mine["MODEL.RESNETS.DEPTH"], mine["MODEL.WEIGHTS"]) == (depth, VOC_WEIGHTS[depth])
    # VOC's 20 classes, from the datasets Detectron2 registers (evaluated as Pascal VOC).
    for name in mine["DATASETS.TRAIN"] + mine["DATASETS.TEST"]:
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "pascal_voc"
        assert len(meta.thing_classes) == mine["MODEL.ROI_HEADS.NUM_CLASSES"] == 20
