"""BackbonesCheckpointer's resume: a corrupt latest checkpoint is named and the previous one
used; weights that are not finite are never saved."""

from __future__ import annotations

import logging

import pytest
import torch

from backbones import BackbonesCheckpointer
from backbones.checkpoint import UnreadableCheckpointError
from backbones.errors import DivergenceError
from backbones.modeling import make_resnet


def saved(tmp_path, *iterations: int) -> BackbonesCheckpointer:
    """A checkpointer over a slim R-18 with ``model_<it>.pth`` saved for each iteration; the
    weights of iteration ``it`` are all ``it``."""
    model = make_resnet(18, stem_out_channels=8, res2_out_channels=8, norm="BN")
    checkpointer = BackbonesCheckpointer(model, str(tmp_path), save_to_disk=True)
    for it in iterations:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(it)
        checkpointer.save(f"model_{it:07d}", iteration=it)
    return checkpointer


def loaded_weight(checkpointer: BackbonesCheckpointer) -> float:
    return float(checkpointer.model.stem.conv1.weight[0, 0, 0, 0].detach())


def test_resume_uses_the_latest(tmp_path):
    checkpointer = saved(tmp_path, 3, 7)
    with torch.no_grad():
        checkpointer.model.stem.conv1.weight.zero_()
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 7
    assert loaded_weight(checkpointer) == 7


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_corrupt_latest_is_named_and_the_previous_used(tmp_path, caplog, damage):
    checkpointer = saved(tmp_path, 3, 7, 11)
    latest = tmp_path / "model_0000011.pth"
    data = latest.read_bytes()
    latest.write_bytes(
        {"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"x" * 99}[damage]
    )
    with caplog.at_level(logging.WARNING):
        checkpoint = checkpointer.resume_or_load("", resume=True)
    assert checkpoint["iteration"] == 7 and loaded_weight(checkpointer) == 7
    assert "Cannot resume from it" in caplog.text and str(latest) in caplog.text
    assert "Resumed from" in caplog.text and "model_0000007.pth" in caplog.text


def test_no_readable_checkpoint_is_an_error_naming_them(tmp_path):
    checkpointer = saved(tmp_path, 3, 7)
    for name in ("model_0000003.pth", "model_0000007.pth"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(UnreadableCheckpointError, match="None of the checkpoints") as error:
        checkpointer.resume_or_load("", resume=True)
    assert "model_0000003.pth" in str(error.value) and "model_0000007.pth" in str(error.value)


def test_checkpoint_files_newest_first(tmp_path):
    checkpointer = saved(tmp_path, 3, 12, 7)
    (tmp_path / "model_final.pth").write_bytes((tmp_path / "model_0000012.pth").read_bytes())
    names = [p.rsplit("/", 1)[1] for p in checkpointer.checkpoint_files()]
    # last_checkpoint names model_0000007 (saved last), then final, then by iteration.
    assert names == [
        "model_0000007.pth",
        "model_final.pth",
        "model_0000012.pth",
        "model_0000003.pth",
    ]


def test_without_resume_loads_the_weights_file(tmp_path):
    checkpointer = saved(tmp_path, 3, 7)
    checkpoint = checkpointer.resume_or_load(str(tmp_path / "model_0000003.pth"), resume=False)
    assert loaded_weight(checkpointer) == 3 and checkpoint["iteration"] == 3


@pytest.mark.parametrize("save_to_disk", [True, False])
def test_nonfinite_weights_are_not_saved_on_any_process(tmp_path, save_to_disk):
    checkpointer = saved(tmp_path, 3)
    checkpointer.save_to_disk = save_to_disk  # False: a process other than the main one
    with torch.no_grad():
        checkpointer.model.res3[0].conv1.weight[1, 0, 0, 0] = float("inf")
    with pytest.raises(DivergenceError, match=r"res3\.0\.conv1\.weight") as error:
        checkpointer.save("model_0000005", iteration=5)
    assert error.value.iteration == 5
    assert not (tmp_path / "model_0000005.pth").exists()
    assert checkpointer.get_checkpoint_file().endswith("model_0000003.pth")


def test_divergence_message():
    text = str(DivergenceError(12, "loss_cls = nan", lr=0.02, last_checkpoint="out/model_7.pth"))
    assert "iteration 12 at LR 0.02: loss_cls = nan" in text
    assert "out/model_7.pth; --resume continues from it" in text
    assert "No checkpoint was saved" in str(DivergenceError(3, "x"))
