"""Our ResNet-FPN inside torchvision's Faster R-CNN and Mask R-CNN: a training step, inference."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import FasterRCNN, MaskRCNN

from backbones import make_resnet_fpn
from backbones.export import (
    TorchvisionBackbone,
    as_torchvision_backbone,
    torchvision_faster_rcnn,
    torchvision_mask_rcnn,
)

# A shrunk R-18-FPN with trainable norms, tiny images and few sampled anchors / RoIs.
BACKBONE = dict(depth=18, norm="BN", stem_out_channels=8, res2_out_channels=8, out_channels=16)
SMALL = dict(
    min_size=64,
    max_size=96,
    rpn_batch_size_per_image=32,
    box_batch_size_per_image=32,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
)
BUILDERS = {"faster": torchvision_faster_rcnn, "mask": torchvision_mask_rcnn}


def images_and_targets(masks: bool):
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=gen), torch.rand(3, 64, 96, generator=gen)]
    targets = []
    for image, boxes in zip(images, ([[4, 6, 40, 50]], [[10, 8, 60, 40], [50, 20, 90, 60]])):
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.arange(1, len(boxes) + 1),
        }
        if masks:
            target["masks"] = torch.zeros(len(boxes), *image.shape[1:], dtype=torch.uint8)
            for mask, (x0, y0, x1, y1) in zip(target["masks"], boxes):
                mask[y0:y1, x0:x1] = 1
        targets.append(target)
    return images, targets


def test_adapter_gives_out_channels_and_ordered_levels():
    body = as_torchvision_backbone(BACKBONE)
    assert isinstance(body, TorchvisionBackbone) and body.out_channels == 16
    assert body.roi_feature_names == ["p2", "p3", "p4", "p5"]
    features = body(torch.zeros(1, 3, 64, 96))
    assert list(features) == ["p2", "p3", "p4", "p5", "p6"]
    assert [f.shape[-1] for f in features.values()] == [24, 12, 6, 3, 2]
    assert as_torchvision_backbone(body) is body


@pytest.mark.parametrize("kind", BUILDERS)
def test_training_step_updates_the_backbone(kind):
    torch.manual_seed(0)
    model = BUILDERS[kind](3, backbone={**BACKBONE, "freeze_at": 2}, **SMALL).train()
    assert isinstance(model, MaskRCNN if kind == "mask" else FasterRCNN)
    resnet = model.backbone.fpn.bottom_up
    before = {name: p.detach().clone() for name, p in resnet.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    losses = model(*images_and_targets(masks=kind == "mask"))
    expected = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert set(losses) == expected | ({"loss_mask"} if kind == "mask" else set())
    assert all(torch.isfinite(loss) for loss in losses.values())
    sum(losses.values()).backward()
    optimizer.step()
    changed = {name for name, p in resnet.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("res5.") for name in changed)
    assert not any(name.startswith(("stem.", "res2.")) for name in changed)  # frozen (freeze_at=2)


@pytest.mark.parametrize("kind", BUILDERS)
def test_inference_returns_boxes_labels_scores(kind):
    torch.manual_seed(0)
    # Score threshold 0: an untrained model still returns its top detections to check.
    model = BUILDERS[kind](3, backbone=make_resnet_fpn(**BACKBONE), box_score_thresh=0.0, **SMALL)
    model.eval()
    images, _ = images_and_targets(masks=False)
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    for image, found in zip(images, detections):
        keys = {"boxes", "labels", "scores"} | ({"masks"} if kind == "mask" else set())
        assert set(found) == keys
        n = len(found["scores"])
        assert n > 0
        assert found["boxes"].shape == (n, 4) and found["labels"].shape == (n,)
        assert found["boxes"][:, 2].max() <= image.shape[2]  # in the original image's frame
        assert found["labels"].min() >= 1 and found["labels"].max() <= 2
        if kind == "mask":
            assert found["masks"].shape == (n, 1, *image.shape[1:])


def test_anchor_sizes_follow_the_levels():
    model = torchvision_faster_rcnn(3, backbone=dict(BACKBONE, top_block=None), **SMALL)
    assert model.rpn.anchor_generator.sizes == ((32,), (64,), (128,), (256,))
    assert model.roi_heads.box_roi_pool.featmap_names == ["p2", "p3", "p4", "p5"]
    with pytest.raises(ValueError, match="anchor_sizes has 3 sizes for 5 levels"):
        torchvision_faster_rcnn(3, backbone=BACKBONE, anchor_sizes=(32, 64, 128))


def test_unknown_detector_option_is_an_error():
    with pytest.raises(TypeError, match="FasterRCNN has no option.*box_batch_per_image"):
        torchvision_faster_rcnn(3, backbone=BACKBONE, box_batch_per_image=64)
