"""The three ways to start a training (``--num-gpus``, torchrun, SLURM's srun): the launcher
found from simulated environments, SLURM host lists, the flags checked against the launcher and
the GPUs, the start line, and real process groups of 2 CPU processes under torchrun and under
a simulated srun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from backbones import load_cfg
from backbones.data import generate_shapes
from backbones.engine.cli import check_devices, describe_launch, plan_launch, training_batch
from backbones.engine.distributed import (
    LaunchEnv,
    LaunchError,
    RendezvousError,
    check_dist_url,
    detect_launch,
    expand_hostlist,
    slurm_port,
)

ROOT = Path(__file__).resolve().parents[1]

TORCHRUN = {
    "RANK": "3",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "4",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29400",
    "TORCHELASTIC_RUN_ID": "none",
}
SLURM = {
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "8",
    "SLURM_TASKS_PER_NODE": "4(x2)",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_JOB_ID": "123456",
}

# ---------------------------------------------------------------------------------------------
# The launcher from the environment


def test_a_plain_environment_is_started_here():
    assert detect_launch({"PATH": "/usr/bin"}) == LaunchEnv("spawn")


def test_torchrun_environment():
    env = detect_launch(TORCHRUN)
    assert env == LaunchEnv("torchrun", 3, 1, 4, 2, "10.0.0.1", 29400)
    assert (env.num_machines, env.machine_rank) == (2, 1)
    # Other env:// launchers set the same variables without torchrun's run id.
    assert detect_launch({k: v for k, v in TORCHRUN.items() if k != "TORCHELASTIC_RUN_ID"}) == env


def test_torchrun_wins_over_slurm():
    # srun ... torchrun ...: the processes are torchrun's.
    assert detect_launch({**SLURM, **TORCHRUN}).launcher == "torchrun"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"LOCAL_WORLD_SIZE": None}, "LOCAL_WORLD_SIZE is not set"),
        ({"RANK": "one"}, "RANK='one' is not an integer"),
        ({"LOCAL_RANK": "2"}, "not a valid layout"),
        ({"WORLD_SIZE": "3"}, "not a valid layout"),
    ],
)
def test_torchrun_environment_errors_name_the_variable(change, message):
    environ = {k: v for k, v in {**TORCHRUN, **change}.items() if v is not None}
    with pytest.raises(LaunchError, match=message):
        detect_launch(environ)


def test_slurm_environment():
    env = detect_launch(SLURM)
    assert env == LaunchEnv("slurm", 5, 1, 8, 4, "gpu07", slurm_port("123456"))
    assert (env.num_machines, env.machine_rank) == (2, 1)
    # MASTER_ADDR / MASTER_PORT, when set, win; srun's step node list wins over the job's.
    env = detect_launch({**SLURM, "MASTER_PORT": "29501", "SLURM_STEP_NODELIST": "n[3-4]"})
    assert (env.master_addr, env.master_port) == ("n3", 29501)
    assert detect_launch({**SLURM, "MASTER_ADDR": "10.1.1.1"}).master_addr == "10.1.1.1"
    # --ntasks-per-node gives SLURM_NTASKS_PER_NODE
    assert detect_launch({**SLURM, "SLURM_NTASKS_PER_NODE": "2"}).local_world_size == 2


def test_one_slurm_task_is_a_shell_that_starts_its_own_processes():
    # salloc / srun --pty bash, then train_net.py --num-gpus 8 in that shell.
    assert detect_launch({**SLURM, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).launcher == "spawn"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"SLURM_TASKS_PER_NODE": "4,3"}, "different numbers of tasks"),
        ({"SLURM_TASKS_PER_NODE": "four"}, "expected counts like"),
        ({"SLURM_TASKS_PER_NODE": None}, "srun --ntasks-per-node"),
        ({"SLURM_JOB_NODELIST": None}, "SLURM_JOB_NODELIST is not set"),
        ({"SLURM_LOCALID": None}, "SLURM_LOCALID is not set"),
    ],
)
def test_slurm_environment_errors_name_the_variable(change, message):
    environ = {k: v for k, v in {**SLURM, **change}.items() if v is not None}
    with pytest.raises(LaunchError, match=message):
        detect_launch(environ)


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("node[01-04],gpu7", ["node01", "node02", "node03", "node04", "gpu7"]),
        ("a1,b2", ["a1", "b2"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("x[007,9-10]y", ["x007y", "x9y", "x10y"]),
        ("r[1-2]-n[1-2]", ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]),
        ("gpu[1-2],cpu[3]", ["gpu1", "gpu2", "cpu3"]),
    ],
)
def test_expand_hostlist(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("hostlist", ["node[01-", "node]1[", "n[a-b]", "n[1-2"])
def test_expand_hostlist_errors(hostlist):
    with pytest.raises(LaunchError, match="host list"):
        expand_hostlist(hostlist)


def test_slurm_port_is_the_same_in_every_task_and_below_the_ephemeral_range():
    ports = {slurm_port(str(job)) for job in range(100000, 100500)}
    assert len(ports) == 500 and all(15000 <= p < 25000 for p in ports)
    assert slurm_port("123456") == slurm_port("123456")


# ---------------------------------------------------------------------------------------------
# The command's flags against the launcher and the machine


def test_plan_from_num_gpus():
    assert plan_launch(LaunchEnv("spawn")) == LaunchEnv("spawn")
    plan = plan_launch(
        LaunchEnv("spawn"),
        num_gpus=4,
        num_machines=2,
        machine_rank=1,
        dist_url="tcp://10.0.0.1:29500",
    )
    assert plan == LaunchEnv("spawn", 4, 0, 8, 4, "10.0.0.1", 29500)
    with pytest.raises(LaunchError, match="--num-machines 2 needs --dist-url"):
        plan_launch(LaunchEnv("spawn"), num_machines=2)
    with pytest.raises(LaunchError, match="0 <= --machine-rank < --num-machines"):
        plan_launch(LaunchEnv("spawn"), num_machines=2, machine_rank=2, dist_url="tcp://a:1")


def test_flags_under_torchrun_must_agree():
    env = detect_launch(TORCHRUN)
    assert plan_launch(env, num_gpus=2, num_machines=2, machine_rank=1) is env
    with pytest.raises(LaunchError) as error:
        plan_launch(env, num_gpus=8)
    assert str(error.value) == (
        "--num-gpus 8 disagrees with torchrun: --num-gpus 2 here (world size 4, 2 per machine); "
        "leave --num-gpus out, torchrun decides, or start torchrun --nproc_per_node 8"
    )
    with pytest.raises(LaunchError, match="--machine-rank 0 disagrees"):
        plan_launch(env, machine_rank=0)
    with pytest.raises(LaunchError, match="leave --dist-url out"):
        plan_launch(env, dist_url="tcp://10.0.0.1:1234")
    with pytest.raises(LaunchError, match="srun --ntasks-per-node 2"):
        plan_launch(detect_launch(SLURM), num_gpus=2)


def test_more_processes_than_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    check_devices(LaunchEnv("spawn", world_size=2, local_world_size=2), "cpu")  # CPU processes
    check_devices(LaunchEnv("spawn"), "cuda")
    with pytest.raises(LaunchError) as error:
        check_devices(LaunchEnv("spawn", world_size=2, local_world_size=2), "cuda")
    assert str(error.value) == (
        "--num-gpus 2 with MODEL.DEVICE cuda, but this machine has 1 GPU(s) "
        "(CUDA_VISIBLE_DEVICES=0): one process per GPU, --num-gpus 1; or MODEL.DEVICE cpu to "
        "train in CPU processes"
    )
    with pytest.raises(LaunchError, match="torchrun starts 2 processes per machine"):
        check_devices(detect_launch(TORCHRUN), "cuda")


def test_batch_and_lr_per_process_and_in_all():
    solver = ["SOLVER.IMS_PER_BATCH", "16", "SOLVER.BASE_LR", "0.02", "MODEL.DEVICE", "cpu"]
    cfg = load_cfg(opts=solver)
    assert training_batch(cfg, 8) == (16, 0.02)
    assert describe_launch(cfg, "torchrun", 8, 4) == (
        "Launcher: torchrun; world size 8 (4 per machine on 2 machines); batch 2 per process, "
        "16 in total; base LR 0.02"
    )
    with pytest.raises(LaunchError, match="SOLVER.IMS_PER_BATCH 16 does not split evenly over 3"):
        training_batch(cfg, 3)
    # An evaluation reads one image at a time in each process: no batch to split.
    assert describe_launch(cfg, "spawn", 3, 3, train=False) == (
        "Launcher: --num-gpus (processes started here); world size 3 (3 per machine on 1 machine)"
    )
    # Detectron2's linear scaling rule, as its trainer applies it.
    cfg = load_cfg(opts=[*solver, "SOLVER.REFERENCE_WORLD_SIZE", "8"])
    assert training_batch(cfg, 2) == (4, pytest.approx(0.005))
    assert describe_launch(cfg, "slurm", 2, 2).endswith(
        "batch 2 per process, 4 in total; base LR 0.005 (SOLVER.IMS_PER_BATCH 16 and "
        "SOLVER.BASE_LR 0.02 scaled from SOLVER.REFERENCE_WORLD_SIZE 8)"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_rendezvous_times_out():
    url = f"tcp://127.0.0.1:{_free_port()}"
    with pytest.raises(RendezvousError, match=f"--dist-url {url}: rank 0 at .* within 0.5 s"):
        check_dist_url(url, 1, timeout=timedelta(seconds=0.5))
    check_dist_url(url, 0, timeout=timedelta(seconds=0.5))  # machine 0 can listen there
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        url = f"tcp://127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(LaunchError, match="is in use"):
            check_dist_url(url, 0, timeout=timedelta(seconds=0.5))
        check_dist_url(url, 1, timeout=timedelta(seconds=0.5))  # reachable


# ---------------------------------------------------------------------------------------------
# Real process groups of 2 CPU processes

# A script: torchrun and srun start files, not functions.
_PROBE = """
import json, os, sys
import torch
import torch.distributed as dist
from detectron2.utils import comm
from backbones.engine.distributed import detect_launch, launch


def probe(out_dir, launcher):
    total = torch.tensor([comm.get_rank() + 1.0])
    dist.all_reduce(total)
    info = dict(
        launcher=launcher,
        pid=os.getpid(),
        rank=comm.get_rank(),
        world_size=comm.get_world_size(),
        local_rank=comm.get_local_rank(),
        local_size=comm.get_local_size(),
        backend=dist.get_backend(),
        total=total.item(),
    )
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    env = detect_launch(os.environ)
    args = (sys.argv[1], env.launcher)
    launch(probe, env.local_world_size, launcher=env, device="cpu", args=args)
"""


def _environ(**extra: str) -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    drop += ("TORCHELASTIC_RUN_ID",)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in drop}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _check_ranks(out: Path, launcher: str) -> None:
    infos = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert infos[0]["pid"] != infos[1]["pid"]
    for rank, info in enumerate(infos):
        assert info["launcher"] == launcher and info["backend"] == "gloo"
        assert (info["rank"], info["local_rank"]) == (rank, rank)
        assert info["world_size"] == info["local_size"] == 2
        assert info["total"] == 3.0  # 1 + 2: the two processes are one group


def test_torchrun_starts_one_group_of_two(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(_PROBE))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    proc = subprocess.run(
        [*command, "2", str(script), str(tmp_path)],
        env=_environ(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_ranks(tmp_path, "torchrun")


def test_srun_tasks_form_one_group_of_two(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(_PROBE))
    slurm = dict(
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_JOB_NODELIST="localhost",
        SLURM_JOB_ID="4242",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)],
            env=_environ(**slurm, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank)),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
    _check_ranks(tmp_path, "slurm")


@pytest.mark.slow
def test_train_net_under_torchrun_is_one_training_and_quiet(tmp_path):
    data = {
        f"tiny_{split}": generate_shapes(tmp_path / "data", split, num_images=n)
        for split, n in (("train", 4), ("val", 2))
    }
    flags = [arg for name, files in data.items() for arg in ("--dataset", name, *map(str, files))]
    opts = [
        "DATASETS.TRAIN", '("tiny_train",)', "DATASETS.TEST", '("tiny_val",)',
        "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "64", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
        "SOLVER.WARMUP_ITERS", "0", "OUTPUT_DIR", str(tmp_path / "out"),
    ]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    train_net = ["tools/train_net.py", "--config-file", "configs/mrcnn_r18_shapes.yaml"]
    proc = subprocess.run(
        [*command, "2", *train_net, *flags, *opts],
        env=_environ(DETECTRON2_DATASETS=str(tmp_path / "data")),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "Rank of current process: 0. World size: 2" in log
    assert (
        "Launcher: torchrun; world size 2 (2 per machine on 1 machine); batch 1 per process, 2 "
        "in total; base LR 0.001" in log
    )
    # Quiet by default: no third-party deprecation notice in either process.
    for notice in ("is deprecated", "torch.meshgrid", "is_fx_tracing", "No CUDA runtime"):
        assert notice not in proc.stdout + proc.stderr
