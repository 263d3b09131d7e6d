"""Synchronised batch norm across CPU processes: ``norm="SyncBN"`` (a ``SyncBatchNorm``) and
``norm="naiveSyncBN"`` (Detectron2's ``NaiveSyncBatchNorm``) in two gloo processes, each given half
of a batch, against plain BN over the whole batch in one process.

torch's own ``SyncBatchNorm`` refuses CPU tensors in distributed training ("SyncBatchNorm expected
input tensor to be on GPU"); ``"SyncBN"`` is expected to synchronise CPU processes all the same,
as ``--num-gpus 2`` on a machine without GPU trains with two gloo processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from detectron2.layers import NaiveSyncBatchNorm
from torch import nn

from backbones import make_resnet

from helpers import randomize_

pytestmark = pytest.mark.slow  # two processes, each importing torch and Detectron2

ROOT = Path(__file__).resolve().parents[1]
SYNC_NORMS = ("SyncBN", "naiveSyncBN")
NORM_CLASSES = {"SyncBN": "SyncBatchNorm", "naiveSyncBN": NaiveSyncBatchNorm.__name__}
# A tiny R-18 (full topology, widths shrunk), in float64 so that only rounding differs.
TINY = dict(stem_out_channels=8, res2_out_channels=8)
BATCH = dict(size=(4, 3, 64, 64), seed=1)  # rank r takes images 2r, 2r + 1
# float64, relative to the scale of what is compared (outputs, summed gradients, running
# statistics): measured <= 2.4e-14 for both norms
TOL = 1e-10


def tiny_resnet(norm: str) -> nn.Module:
    return make_resnet(18, **TINY, norm=norm).double().train()


def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(BATCH["seed"])
    return torch.randn(*BATCH["size"], generator=generator, dtype=torch.float64)


def step(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training forward and backward; the loss sums over images, so the losses of the two
    halves add up to the loss of the whole batch (and so do their gradients)."""
    outputs = model(x)
    sum((f * f).sum() for f in outputs.values()).backward()
    return outputs


# A script, not a function of this module: spawned workers must import it whatever the pytest
# import mode (as in tests/test_engine.py).
_WORKER = """
import sys
import torch
import torch.distributed as dist
from detectron2.utils import comm
from torch.nn.modules.batchnorm import _BatchNorm as BN
from backbones.engine import launch

sys.path.insert(0, sys.argv[2])  # tests/, for test_syncbn's helpers
from test_syncbn import SYNC_NORMS, images, step, tiny_resnet


def worker(out_dir):
    rank = comm.get_rank()
    results = {}
    for norm in SYNC_NORMS:
        model = tiny_resnet(norm)
        model.load_state_dict(torch.load(f"{out_dir}/init.pt", weights_only=True), strict=True)
        try:
            outputs = step(model, images()[2 * rank : 2 * rank + 2])
        except Exception as error:  # reported by the test, with the other norm's results
            results[norm] = {"error": f"{type(error).__name__}: {error}"}
            continue
        grads = {}
        for name, param in model.named_parameters():
            dist.all_reduce(param.grad)  # the sum over ranks: the whole batch's gradient
            grads[name] = param.grad
        results[norm] = {
            "types": sorted({type(m).__name__ for m in model.modules() if isinstance(m, BN)}),
            "outputs": {k: v.detach() for k, v in outputs.items()},
            "buffers": dict(model.named_buffers()),
            "grads": grads,
        }
    torch.save(results, f"{out_dir}/rank{rank}.pt")


if __name__ == "__main__":
    launch(worker, 2, dist_url="auto", args=(sys.argv[1],), device="cpu")
"""


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[dict, list[dict]]:
    """Plain BN over the whole batch in this process (its outputs, buffers, gradients and each
    norm's input), and each rank's results for every norm of :data:`SYNC_NORMS`."""
    tmp = tmp_path_factory.mktemp("syncbn")
    reference = randomize_(tiny_resnet("BN"))  # non-trivial affine and running statistics
    torch.save(reference.state_dict(), tmp / "init.pt")
    initial = {k: v.clone() for k, v in reference.named_buffers()}
    inputs = {}
    for name, module in reference.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(
                lambda m, args, out, name=name: inputs.__setitem__(name, args[0].detach())
            )
    outputs = step(reference, images())
    expected = {
        "outputs": {k: v.detach() for k, v in outputs.items()},
        "buffers": dict(reference.named_buffers()),
        "initial": initial,
        "grads": {k: p.grad for k, p in reference.named_parameters()},
        "inputs": inputs,
        "momentum": reference.stem.conv1.norm.momentum,
    }
    script = tmp / "syncbn_worker.py"
    script.write_text(textwrap.dedent(_WORKER))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp), str(ROOT / "tests")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return expected, ranks


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    scale = max(1.0, expected.abs().max().item())
    diff = (actual - expected).abs().max().item()
    assert diff <= TOL * scale, f"{what}: max abs diff {diff:.2e} > {TOL:.0e} x scale {scale:.1f}"


@pytest.mark.parametrize("norm", SYNC_NORMS)
def test_sync_bn_in_two_processes_equals_bn_over_the_whole_batch(two_processes, norm):
    expected, ranks = two_processes
    for rank, results in enumerate(ranks):
        result = results[norm]
        assert "error" not in result, f"norm={norm!r} on CPU processes: {result.get('error')}"
        assert result["types"] == [NORM_CLASSES[norm]]
        # Train mode normalises with the statistics of the whole batch: each rank's outputs are
        # its half of the one-process outputs.
        for name, output in result["outputs"].items():
            half = expected["outputs"][name][2 * rank : 2 * rank + 2]
            assert_close(output, half, f"rank {rank} {name}")
        # The gradients summed over the ranks: those of the whole batch.
        for name, grad in result["grads"].items():
            assert_close(grad, expected["grads"][name], f"rank {rank} grad {name}")

    # The running statistics: both ranks hold the same, those of the whole batch.
    momentum = expected["momentum"]
    for name, buffer in ranks[0][norm]["buffers"].items():
        assert torch.equal(buffer, ranks[1][norm]["buffers"][name]), name
        target = expected["buffers"][name]
        if norm == "naiveSyncBN" and name.endswith("running_var"):
            # Detectron2's NaiveSyncBatchNorm keeps the biased variance of the batch (divided
            # by n, the values per channel), where BatchNorm2d and torch's SyncBatchNorm keep the
            # unbiased one (by n - 1): computed here from the norm's input.
            x = expected["inputs"][name.rsplit(".", 1)[0]]
            batch_var = x.var(dim=(0, 2, 3), unbiased=False)
            target = (1 - momentum) * expected["initial"][name] + momentum * batch_var
        if norm == "naiveSyncBN" and name.endswith("num_batches_tracked"):
            target = expected["initial"][name]  # not counted (only read when momentum is None)
        assert_close(buffer.double(), target.double(), name)


def test_naive_sync_bn_running_var_is_biased_by_n_over_n_minus_1(two_processes):
    """What the special case above is: at res5 (2x2 per image, n = 16 over the whole batch) the
    batch variance NaiveSyncBatchNorm averages in is 15/16 of BatchNorm2d's."""
    expected, ranks = two_processes
    if "error" in ranks[0]["naiveSyncBN"]:
        pytest.fail(ranks[0]["naiveSyncBN"]["error"])
    name = "res5.1.conv2.norm.running_var"
    momentum, initial = expected["momentum"], expected["initial"][name]
    naive = (ranks[0]["naiveSyncBN"]["buffers"][name] - (1 - momentum) * initial) / momentum
    plain = (expected["buffers"][name] - (1 - momentum) * initial) / momentum
    assert expected["inputs"][name.rsplit(".", 1)[0]][:, 0].numel() == 16
    assert_close(naive, plain * 15 / 16, name)
