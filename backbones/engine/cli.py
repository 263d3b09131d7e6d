"""What the command-line tools add around a training: the processes from the flags and the
launcher's environment, the checks that find a user's mistakes before anything starts (datasets,
weights), one ``error: ...`` line instead of a traceback for them, and the start line."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

import torch
import torch.multiprocessing as mp
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from ..checkpoint import DiskFullError
from ..coco_json import read_coco_json
from ..config import InputSettingsError, check_architecture, fetch_weights, read_ahead
from ..data.coco import check_dataset_entry, datasets_root, missing_image_files
from ..data.coco_faults import COUNTED, FATAL, DataFaultError, find_coco_faults
from ..data.loader import UnreadableImageError
from ..errors import BackboneOptionError, DivergenceError, StoppedBySignal
from ..weights import Weights, WeightsFormatError
from .config import ConfigError, RunInProgressError
from .distributed import (
    DEFAULT_RENDEZVOUS_TIMEOUT,
    LaunchEnv,
    LaunchError,
    RendezvousError,
    detect_launch,
    launch,
)

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The flags


def add_dataset_argument(parser: argparse.ArgumentParser, keys: str) -> None:
    """``--dataset NAME JSON IMAGE_ROOT`` (repeatable; ``args.dataset``: the triples), a
    COCO-format dataset registered under NAME for the config keys ``keys``."""
    parser.add_argument(
        "--dataset",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help=f"register a COCO-format dataset under NAME for {keys} (repeatable)",
    )


def training_argument_parser(dataset_keys: str) -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` plus ``--dataset`` (for ``dataset_keys``),
    ``--dist-timeout`` and ``--debug``: the flags of the training tools. ``--num-gpus``,
    ``--num-machines``, ``--machine-rank`` and ``--dist-url`` are None when not given: under
    torchrun or SLURM the launcher decides them."""
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser()
    parser.set_defaults(num_gpus=None, num_machines=None, machine_rank=None, dist_url=None)
    add_dataset_argument(parser, dataset_keys)
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_RENDEZVOUS_TIMEOUT.total_seconds(),
        metavar="SECONDS",
        help="how long the processes wait for each other to start (default: %(default)g)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error"
    )
    return parser


# A config key in the KEY VALUE pairs (SOLVER.MAX_ITER, OUTPUT_DIR) or a LazyConfig override
# (train.max_iter=10): where flags given after the pairs end.
_OPT_START = re.compile(r"^([A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*|[\w.+~]+=.*)$")


def parse_training_args(dataset_keys: str, argv: list[str] | None = None) -> argparse.Namespace:
    """:func:`training_argument_parser`'s arguments, with the tool's flags also taken where a
    user puts them after the KEY VALUE pairs (``... SOLVER.MAX_ITER 10 --dataset a b c``):
    argparse would pass them on as config keys (``Non-existent key: --dataset``)."""
    parser = training_argument_parser(dataset_keys)
    args = parser.parse_args(argv)
    opts, flags, rest = [], [], list(args.opts)
    while rest:
        item = rest.pop(0)
        if item.startswith("--") and item.split("=")[0] in parser._option_string_actions:
            flags.append(item)
            while rest and not rest[0].startswith("--") and not _OPT_START.match(rest[0]):
                flags.append(rest.pop(0))
        else:
            opts.append(item)
    if flags:
        parser.parse_args(flags, namespace=args)
    args.opts = opts
    return args


# ---------------------------------------------------------------------------------------------
# The processes of a training

LAUNCHER_NAMES = {
    "spawn": "--num-gpus (processes started here)",
    "torchrun": "torchrun",
    "slurm": "SLURM (srun)",
}
# Each launcher's way of asking for N processes per machine.
_PER_MACHINE = {
    "spawn": "--num-gpus {n}",
    "torchrun": "torchrun --nproc_per_node {n}",
    "slurm": "srun --ntasks-per-node {n}",
}


def plan_launch(
    env: LaunchEnv,
    *,
    num_gpus: int | None = None,
    num_machines: int | None = None,
    machine_rank: int | None = None,
    dist_url: str | None = None,
) -> LaunchEnv:
    """The processes of a training, from the launcher's environment ``env``
    (:func:`~backbones.engine.distributed.detect_launch`) and the command's flags (``None``:
    not given).

    Under torchrun or SLURM, ``env`` itself, and the flags given must agree with it. Otherwise
    ``num_gpus`` (default 1) processes on each of ``num_machines`` (default 1) machines.

    Raises:
        LaunchError: a flag that contradicts the launcher, or flags that cannot work together.
    """
    if env.launcher != "spawn":
        name = env.launcher
        given = {"--num-gpus": num_gpus, "--num-machines": num_machines}
        found = {"--num-gpus": env.local_world_size, "--num-machines": env.num_machines}
        given["--machine-rank"], found["--machine-rank"] = machine_rank, env.machine_rank
        for flag, value in given.items():
            if value is not None and value != found[flag]:
                per_machine = _PER_MACHINE[name].format(n=value)
                fix = f", or start {per_machine}" if flag == "--num-gpus" else ""
                raise LaunchError(
                    f"{flag} {value} disagrees with {name}: {flag} {found[flag]} here (world size "
                    f"{env.world_size}, {env.local_world_size} per machine); leave {flag} out, "
                    f"{name} decides{fix}"
                )
        if dist_url is not None:
            raise LaunchError(
                f"--dist-url {dist_url}: under {name} the processes meet at {env.master_addr}:"
                f"{env.master_port} (MASTER_ADDR, MASTER_PORT); leave --dist-url out"
            )
        return env
    num_gpus = 1 if num_gpus is None else num_gpus
    num_machines = 1 if num_machines is None else num_machines
    machine_rank = machine_rank or 0
    if num_gpus < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise LaunchError(
            f"--num-gpus {num_gpus} --num-machines {num_machines} --machine-rank {machine_rank}: "
            "need one process and one machine at least, and 0 <= --machine-rank < --num-machines"
        )
    if num_machines > 1 and dist_url in (None, "auto"):
        raise LaunchError(
            f"--num-machines {num_machines} needs --dist-url tcp://<machine 0's address>:<port>, "
            "the same on every machine"
        )
    url = urlparse(dist_url or "")
    tcp = url.scheme == "tcp"
    return LaunchEnv(
        "spawn",
        rank=machine_rank * num_gpus,
        world_size=num_machines * num_gpus,
        local_world_size=num_gpus,
        master_addr=url.hostname if tcp else None,
        master_port=url.port if tcp else None,
    )


def plan_launch_from_args(args: argparse.Namespace) -> LaunchEnv:
    """:func:`plan_launch` from this process's environment and the training tools' flags
    (:func:`training_argument_parser`)."""
    return plan_launch(
        detect_launch(os.environ),
        num_gpus=args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
    )


def launch_tool(
    main: Callable[..., Any],
    plan: LaunchEnv,
    args: argparse.Namespace,
    main_args: tuple[Any, ...],
    device: str,
) -> None:
    """``main(*main_args)`` in each process of ``plan`` (:func:`backbones.engine.launch`),
    with the rendezvous timeout of ``--dist-timeout``; the device decides between NCCL on GPUs
    and gloo CPU processes. ``args.launcher`` tells the processes which launcher started them."""
    args.launcher = plan.launcher
    launch(
        main,
        plan.local_world_size,
        num_machines=plan.num_machines,
        machine_rank=plan.machine_rank,
        dist_url=args.dist_url,
        args=main_args,
        device=device,
        launcher=plan,
        rendezvous_timeout=timedelta(seconds=args.dist_timeout),
    )


def check_devices(env: LaunchEnv, device: str) -> None:
    """On a CUDA ``device``, one GPU for each process of this machine.

    Raises:
        LaunchError: more processes per machine than GPUs, naming both and the fix.
    """
    available = torch.cuda.device_count() if torch.device(device).type == "cuda" else 0
    if torch.device(device).type != "cuda" or env.local_world_size <= available:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    if env.launcher == "spawn":
        asked = f"--num-gpus {env.local_world_size}"
    else:
        asked = f"{env.launcher} starts {env.local_world_size} processes per machine"
    raise LaunchError(
        f"{asked} with MODEL.DEVICE {device}, but this machine has {available} GPU(s)"
        f"{shown}: one process per GPU, {_PER_MACHINE[env.launcher].format(n=available)}; or "
        "MODEL.DEVICE cpu to train in CPU processes"
    )


def training_batch(cfg: CfgNode, world_size: int) -> tuple[int, float]:
    """``(total batch, base LR)`` of a training over ``world_size`` processes: the config's,
    or scaled by ``world_size / SOLVER.REFERENCE_WORLD_SIZE`` when that is set (the rule of
    Detectron2's ``DefaultTrainer.auto_scale_workers``, which the trainer applies). Each
    process takes ``total // world_size`` images.

    Raises:
        LaunchError: a batch that does not split evenly over the processes.
    """
    total, base_lr = cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR
    reference, origin = cfg.SOLVER.REFERENCE_WORLD_SIZE, ""
    if reference and reference != world_size:
        total, base_lr = round(total * world_size / reference), base_lr * world_size / reference
        origin = f" (scaled from SOLVER.REFERENCE_WORLD_SIZE {reference})"
    if total % world_size:
        raise LaunchError(
            f"SOLVER.IMS_PER_BATCH {total}{origin} does not split evenly over {world_size} "
            f"processes: give a multiple of {world_size}, e.g. SOLVER.IMS_PER_BATCH "
            f"{world_size * (total // world_size + 1)}"
        )
    return total, base_lr


def describe_launch(
    cfg: CfgNode, launcher: str, world_size: int, local_world_size: int, *, train: bool = True
) -> str:
    """The start line of a run: launcher and processes, and for a training (``train``) the
    batch per process and in all and the base LR (:func:`training_batch`)."""
    machines = world_size // local_world_size
    line = (
        f"Launcher: {LAUNCHER_NAMES[launcher]}; world size {world_size} ({local_world_size} per "
        f"machine on {machines} machine{'s' if machines > 1 else ''})"
    )
    if not train:
        return line
    total, base_lr = training_batch(cfg, world_size)
    reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
    scaled = (
        f" (SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} and SOLVER.BASE_LR "
        f"{cfg.SOLVER.BASE_LR:g} scaled from SOLVER.REFERENCE_WORLD_SIZE {reference})"
        if reference and reference != world_size
        else ""
    )
    return (
        f"{line}; batch {total // world_size} per process, {total} in total; base LR "
        f"{base_lr:g}{scaled}"
    )


# ---------------------------------------------------------------------------------------------
# Datasets on disk

# Metadata entries naming a dataset's files and folders in Detectron2's registrations (COCO and
# LVIS, Pascal VOC, Cityscapes, ADE20k / panoptic).
_DATASET_PATHS = (
    "json_file",
    "image_root",
    "dirname",
    "image_dir",
    "gt_dir",
    "sem_seg_root",
    "panoptic_root",
    "panoptic_json",
)


class DatasetFilesError(FileNotFoundError):
    """A registered dataset whose files are not on disk."""


def check_datasets(cfg: CfgNode, *, train: bool = True) -> None:
    """Check, before anything is built, that the datasets a run reads are registered and on
    disk: ``DATASETS.TEST`` (evaluated after a training, or alone) and, with ``train``,
    ``DATASETS.TRAIN``. The JSON of each dataset registered from the config
    (``--dataset`` / ``BACKBONES.COCO_DATASETS``) is also scanned for data faults
    (:func:`~backbones.data.coco_faults.find_coco_faults`): fatal ones stop the run, counted ones
    are logged once as a warning. Detectron2's builtins are only looked for
    (``datasets/prepare_coco.py`` checks their contents, faults included); the shapes splits,
    generated on first use, always pass.

    Raises:
        ConfigError: a dataset name that is not registered (with the closest one).
        DatasetFilesError: a file or folder that is missing, naming it and where to get it.
        DataFaultError: a JSON with fatal data faults, or not readable as COCO, naming the
            file, the first faults with their image and annotation ids, and the fix.
    """
    own = {
        check_dataset_entry(f"BACKBONES.COCO_DATASETS[{i}]", entry)[0]
        for i, entry in enumerate(cfg.BACKBONES.COCO_DATASETS)
    }
    scanned: set[str] = set()
    for key in ("DATASETS.TRAIN", "DATASETS.TEST") if train else ("DATASETS.TEST",):
        for name in cfg.DATASETS[key.split(".")[1]]:
            if name not in DatasetCatalog:
                close = difflib.get_close_matches(name, DatasetCatalog.list(), n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ConfigError(
                    f"{key}: no dataset named {name}; {hint}register your own with --dataset "
                    "NAME JSON IMAGE_ROOT or BACKBONES.COCO_DATASETS (docs/data.md)"
                )
            meta = MetadataCatalog.get(name).as_dict()
            if "shapes_config" in meta:  # backbones.data.shapes: generated on first use
                continue
            missing = [
                meta[k] for k in _DATASET_PATHS if meta.get(k) and not os.path.exists(meta[k])
            ]
            if not missing and meta.get("dirname") and meta.get("split"):
                missing = _missing_voc_split(meta)
            if missing:
                raise DatasetFilesError(_missing_files(key, name, missing))
            json_file = meta.get("json_file")
            if name in own and json_file and json_file not in scanned:
                scanned.add(json_file)
                _check_data_faults(key, name, json_file, meta.get("image_root", "IMAGE_ROOT"))


def _missing_voc_split(meta: dict) -> list[str]:
    """The image list of a Pascal VOC split (``dirname/ImageSets/Main/<split>.txt``, which
    Detectron2's ``load_voc_instances`` reads), if absent: VOC 2007's test split comes in an
    archive of its own that unpacks into the same VOC2007 folder as trainval."""
    image_set = os.path.join(meta["dirname"], "ImageSets", "Main", f"{meta['split']}.txt")
    return [] if os.path.exists(image_set) else [image_set]


def _check_data_faults(key: str, name: str, json_file: str, image_root: str) -> None:
    """The JSON's data faults of one dataset (raise on fatal ones, warn on counted ones), and
    its listed images that are not in ``image_root`` (raise: found now, not at iteration 0)."""
    try:
        coco = read_coco_json(json_file)
    except DataFaultError as e:
        raise DataFaultError(f"{key}: dataset {name}: {e}") from None
    report = find_coco_faults(coco, json_file)
    list_all = f"python datasets/prepare_coco.py --dataset {json_file} {image_root}"
    try:
        missing, _ = missing_image_files(coco, image_root)
    except OSError as e:
        raise DatasetFilesError(
            f"{key}: dataset {name}: cannot list its image folder {image_root} ({e}); give the "
            "folder that holds the images (--dataset NAME JSON IMAGE_ROOT)"
        ) from None
    if missing:
        shown = ", ".join(map(str, missing[:3])) + (", ..." if len(missing) > 3 else "")
        raise DatasetFilesError(
            f"{key}: dataset {name}: {len(missing)} of {len(coco['images'])} images listed in "
            f"{json_file} are not in {image_root} ({shown}); give the folder that holds them "
            f"(--dataset NAME JSON IMAGE_ROOT), or list them with {list_all}"
        )
    if not report.ok:
        raise DataFaultError(
            f"{key}: dataset {name}: {json_file} has {report.summary(FATAL)}. Fix the JSON "
            f"(docs/troubleshooting.md, Data faults); list every fault with {list_all}"
        )
    if report.counted:
        logger.warning(
            "%s: dataset %s: %s has %s. Detectron2 drops or clips these and training goes on; "
            "list every fault with %s",
            key,
            name,
            json_file,
            report.summary(COUNTED),
            list_all,
        )


def _missing_files(key: str, name: str, missing: list[str]) -> str:
    others = f" (nor {', '.join(missing[1:])})" if len(missing) > 1 else ""
    message = f"{key}: dataset {name} is not on disk: {missing[0]} does not exist{others}"
    root = os.path.abspath(datasets_root())
    if not all(os.path.abspath(path).startswith(root + os.sep) for path in missing):
        return f"{message}; register it with its real files (docs/data.md)"
    where = (
        f"DETECTRON2_DATASETS={os.environ['DETECTRON2_DATASETS']}"
        if "DETECTRON2_DATASETS" in os.environ
        else f"DETECTRON2_DATASETS (unset, so {datasets_root()}/ in the working directory "
        f"{os.getcwd()})"
    )
    return (
        f"{message}. Detectron2's datasets are read under {where}. Put the data there as "
        "datasets/README.md says (COCO: then check it with python datasets/prepare_coco.py), "
        "or set DETECTRON2_DATASETS to the folder that holds it; without data, try "
        "configs/mrcnn_r18_shapes.yaml"
    )


# ---------------------------------------------------------------------------------------------
# Weights


def read_run_weights(
    url: str, output_dir: str, *, resume: bool, trusted: bool
) -> tuple[str, Weights] | None:
    """The local file of the weights a run starts from (the path, Detectron2's download cache,
    or a download into it) and what it holds, read once: the checkpointer takes them from there.
    None without ``url``, or with ``resume`` and a checkpoint in ``output_dir`` that the run
    continues from instead.

    Raises:
        backbones.config.WeightsUnavailableError: no file there and no download.
        backbones.weights.WeightsFormatError: not a weights file, naming it.
    """
    if not url or (resume and os.path.isfile(os.path.join(output_dir, "last_checkpoint"))):
        return None
    path = fetch_weights(url)
    return path, read_ahead(path, trusted)


def check_weights(
    cfg: CfgNode,
    weights: str | None = None,
    *,
    config_file: str = "",
    resume: bool = False,
    inference: bool = False,
) -> str | None:
    """Resolve, before anything is built, the weights a run loads (``weights``, by default
    ``MODEL.WEIGHTS``): the local file, the copy in Detectron2's download cache, or a download
    into it through Detectron2's PathManager. The file is read once (the checkpointer takes it
    from there) and must hold the config's network. Nothing to do without weights, or with
    ``resume`` and a checkpoint in ``OUTPUT_DIR``, which the run continues from instead.

    Args:
        config_file: the YAML, to offer its sibling made for the weights on a mismatch.
        inference: the weights are a detector to run as it is (not to fine-tune): its box
            classifier must predict the config's ``MODEL.ROI_HEADS.NUM_CLASSES`` (a ConfigError
            naming both numbers and the config to use).

    Returns:
        the local file, None when nothing is loaded from it.

    Raises:
        backbones.config.WeightsUnavailableError: no file there and no download (offline, or
            no file at the address), naming the address, the cache path and the offline fix.
        backbones.weights.WeightsFormatError: not a weights file, naming it.
        backbones.config.WeightsArchitectureError: another network than the config's (depth,
            block type, widths, groups, stem, shortcuts, stride placement), naming both values,
            the keys to set and the config to use instead.
    """
    url = cfg.MODEL.WEIGHTS if weights is None else weights
    found = read_run_weights(
        url, cfg.OUTPUT_DIR, resume=resume, trusted=cfg.BACKBONES.TRUST_WEIGHTS_FILE
    )
    if found is None:
        return None
    path, read = found
    # The stride placement is an input setting: "off" keeps the config's on purpose.
    settings = read.input if cfg.BACKBONES.INPUT_FROM_WEIGHTS == "auto" else None
    name = f"MODEL.WEIGHTS {url}" + ("" if path == url else f" (the copy at {path})")
    check_architecture(cfg, read.architecture, name, settings=settings, config_file=config_file)
    scores = read.state.get("roi_heads.box_predictor.cls_score.weight")
    if inference and scores is not None and len(scores) != cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1:
        raise ConfigError(
            f"{name} predicts {len(scores) - 1} classes but the config has "
            f"MODEL.ROI_HEADS.NUM_CLASSES {cfg.MODEL.ROI_HEADS.NUM_CLASSES}: give the config the "
            "model was trained with (its OUTPUT_DIR/config.yaml), or add "
            f"MODEL.ROI_HEADS.NUM_CLASSES {len(scores) - 1}"
        )
    return path


# ---------------------------------------------------------------------------------------------
# Errors

# Known mistakes and their exit status: 2 for the command line and the config, 1 for data,
# weights and processes. Anything else is a bug and keeps its traceback.
USAGE_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    LaunchError,
    BackboneOptionError,
    InputSettingsError,
)
RUNTIME_ERRORS: tuple[type[Exception], ...] = (
    StoppedBySignal,
    UnreadableImageError,
    RunInProgressError,
    DiskFullError,
    FileNotFoundError,
    DataFaultError,
    WeightsFormatError,
    RendezvousError,
    DivergenceError,
)

_KNOWN = ((USAGE_ERRORS, 2), (RUNTIME_ERRORS, 1))


def _traceback_error(text: str) -> tuple[str, str]:
    """``(error type, message)`` from the last line of a traceback's text
    (``module.Type: message``)."""
    kind, _, message = text.strip().splitlines()[-1].partition(": ")
    return kind, message


def _without_worker_traceback(message: str) -> str:
    """A known error raised in a data-loader worker comes back with the worker's traceback in
    its message (torch's ``ExceptionWrapper``): its own message is the traceback's last line."""
    if "\nOriginal Traceback" not in message:
        return message
    kind, own = _traceback_error(message)
    return own or kind


# torch's DataLoader when one of its worker processes died (_utils/signal_handling.py).
_WORKER_DIED = re.compile(
    r"DataLoader worker \(pids?\(?s?\)? ?([\d, ]+)\) (?:is killed by signal: (.+?)\.? *$|exited "
    r"unexpectedly)"
)


def describe_error(error: BaseException) -> tuple[str | None, int] | None:
    """``(message, exit status)`` of a known mistake, or ``None`` for anything else. The
    message is ``None`` for a started process that failed and said why itself."""
    for errors, status in _KNOWN:
        if isinstance(error, errors):
            return _without_worker_traceback(str(error)), status
    died = _WORKER_DIED.search(str(error)) if isinstance(error, RuntimeError) else None
    if died is not None:
        pid, signal_text = died.groups()
        how = f"was killed by signal {signal_text}" if signal_text else "exited unexpectedly"
        memory = " (out of memory?)" if signal_text is None or "Killed" in signal_text else ""
        return (
            f"a data-loader worker (process {pid.strip()}) {how}{memory}; "
            "fewer workers (DATALOADER.NUM_WORKERS) or a smaller IMS_PER_BATCH need less memory, "
            "and --resume continues from the last checkpoint",
            1,
        )
    if isinstance(error, mp.ProcessRaisedException):
        # A started process failed before main() could say why (joining the others): its
        # traceback's last line names the error.
        kind, message = _traceback_error(str(error))
        known = {e.__name__: status for errors, status in _KNOWN for e in errors}
        status = known.get(kind.rpartition(".")[2])
        return None if status is None else (message, status)
    if isinstance(error, mp.ProcessExitedException):
        if error.signal_name is None:
            return None, error.exit_code
        cause = " (out of memory?)" if error.signal_name == "SIGKILL" else ""
        return f"process {error.error_index} was killed by {error.signal_name}{cause}", 1
    return None


@contextmanager
def user_errors(*, debug: bool = False) -> Iterator[None]:
    """Turn a known mistake raised inside (:func:`describe_error`) into ``error: MESSAGE`` on
    stderr (``error: rank R: ...`` in a process group) and exit status 2 or 1. Anything else,
    and everything with ``debug``, propagates with its traceback."""
    try:
        yield
    except Exception as error:
        known = None if debug else describe_error(error)
        if known is None:
            raise
        message, status = known
        everyone = getattr(error, "said_by_main_process", False)
        if everyone and not comm.is_main_process():
            message = None  # every process has it; the main one says it
        if message is not None:
            rank = f"rank {comm.get_rank()}: " if comm.get_world_size() > 1 and not everyone else ""
            print(f"error: {rank}{message}", file=sys.stderr, flush=True)
        if everyone and comm.get_world_size() > 1:
            # The others wait until the main process has said it: the first process to exit
            # makes the launcher stop the rest, which could otherwise stop it mid-sentence.
            comm.synchronize()
        raise SystemExit(status) from None
