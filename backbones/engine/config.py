"""The one composition of a config: Detectron2's defaults, ``BACKBONES``, a YAML file, ``KEY VALUE``
overrides, extra datasets, and the input settings of ``MODEL.WEIGHTS``."""

from __future__ import annotations

import argparse
import difflib
import fcntl
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_backbones_config, apply_input_settings, config_origins
from ..data import register_datasets_from_cfg
from ..data.coco import check_dataset_entry

logger = logging.getLogger(__name__)

# The configs of this repository, where a mistyped config file name is looked up.
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


class ConfigError(ValueError):
    """A config that cannot be composed: a missing or malformed file, an unknown key, a value of
    the wrong type. The message names the culprit and the fix."""


def load_cfg(
    config_file: str = "",
    opts: Sequence[str] | None = None,
    *,
    datasets: Iterable[Sequence[str]] = (),
) -> CfgNode:
    """The config of a run, frozen: Detectron2's defaults + ``BACKBONES`` + ``config_file`` +
    ``opts``, then

    * ``datasets`` (``[name, json_file, image_root]`` triples, e.g. from ``--dataset``) appended
      to ``BACKBONES.COCO_DATASETS``, and every dataset there registered in this process;
    * the input settings of ``MODEL.WEIGHTS`` for the keys the YAML chain and ``opts`` leave
      unset (``BACKBONES.INPUT_FROM_WEIGHTS``);
    * a CUDA ``MODEL.DEVICE`` (Detectron2's default) becomes ``"cpu"``, with a warning, on a
      machine without CUDA, so that every YAML also runs on CPU.

    Every tool and test composes its config here, once per process.

    Raises:
        ConfigError: a missing or malformed config file, an unknown key (with the closest known
            one), a value of the wrong type.
        ValueError, FileNotFoundError: a bad dataset entry (naming it) or file.
        backbones.config.InputSettingsError: a config input setting that contradicts the weights.
    """
    opts = list(opts or [])
    cfg = add_backbones_config(get_cfg())
    if config_file:
        _merge_file(cfg, config_file)
    try:
        cfg.merge_from_list(opts)
    except (AssertionError, KeyError, ValueError) as e:  # yacs reports with all three
        raise _explained(e, cfg, "in the KEY VALUE overrides", opts) from None
    extra = [list(check_dataset_entry("--dataset", entry)) for entry in datasets]
    if extra:
        cfg.BACKBONES.COCO_DATASETS = [list(e) for e in cfg.BACKBONES.COCO_DATASETS] + extra
    register_datasets_from_cfg(cfg)
    # Input settings follow the weights' source unless the YAML chain or opts set them.
    apply_input_settings(cfg, config_origins(config_file, opts), config_file=config_file)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "MODEL.DEVICE=%s, but this machine has no CUDA: running on the CPU instead (add "
            "MODEL.DEVICE cpu to choose it and hide this line)",
            cfg.MODEL.DEVICE,
        )
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def _merge_file(cfg: CfgNode, config_file: str) -> None:
    if not os.path.isfile(config_file):
        similar = similar_config(config_file)
        fix = f"did you mean {similar}?" if similar else "the configs are listed in docs/configs.md"
        raise ConfigError(f"config file {config_file} does not exist; {fix}")
    try:
        cfg.merge_from_file(config_file)
    except yaml.YAMLError as e:
        raise ConfigError(f"{config_file} is not valid YAML: {' '.join(str(e).split())}") from None
    except OSError as e:
        base = _missing_base(config_file)
        if base is None:
            raise ConfigError(f"{config_file}: {e}") from None
        raise ConfigError(
            f"{config_file}: the _BASE_ file {base} does not exist (a _BASE_ path is relative to "
            "the file that names it)"
        ) from None
    except (AssertionError, KeyError, ValueError) as e:
        raise _explained(e, cfg, f"in {config_file}") from None


def similar_config(
    path: str,
    configs_dir: str | os.PathLike = CONFIGS_DIR,
    suffixes: tuple[str, ...] = (".yaml", ".yml"),
) -> str | None:
    """The config file (named ``*<suffix>``) whose name is closest to ``path``'s, in its folder
    or in ``configs_dir``; shown relative to the working directory when under it."""
    found: dict[str, str] = {}
    for folder in (os.path.dirname(path) or ".", str(configs_dir)):
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                if name.endswith(suffixes):
                    found.setdefault(name, os.path.join(folder, name))
    match = difflib.get_close_matches(os.path.basename(path), list(found), n=1, cutoff=0.6)
    return display_path(found[match[0]]) if match else None


def display_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when it lies below it, else as given: how
    a user would type it in a command."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def _missing_base(config_file: str) -> str | None:
    """The first file of the ``_BASE_`` chain of ``config_file`` that does not exist."""
    path = config_file
    while True:
        try:
            with open(path) as f:
                base = (yaml.safe_load(f) or {}).get("_BASE_")
        except (OSError, yaml.YAMLError, AttributeError):
            return None
        if not base:
            return None
        if not (os.path.isabs(base) or "://" in base):
            base = os.path.join(os.path.dirname(path), base)
        if not os.path.isfile(base):
            return base
        path = base


def _keys(node: CfgNode, prefix: str = "") -> Iterator[str]:
    for name, value in node.items():
        if isinstance(value, CfgNode):
            yield from _keys(value, f"{prefix}{name}.")
        else:
            yield prefix + name


def _explained(error: Exception, cfg: CfgNode, where: str, opts: Sequence[str] = ()) -> Exception:
    """yacs' error for an unknown key, a mistyped value or an odd override list as a
    :class:`ConfigError` saying where and what to do; other errors unchanged."""
    text = str(error.args[0]) if error.args else str(error)
    unknown = re.fullmatch(r"Non-existent (?:config )?key: (\S+)", text)
    if unknown:
        key = unknown.group(1)
        close = difflib.get_close_matches(key, list(_keys(cfg)), n=1, cutoff=0.7)
        fix = (
            f"did you mean {close[0]}?"
            if close
            else "the keys are Detectron2's (detectron2/config/defaults.py) and BACKBONES.* "
            "(docs/configs.md)"
        )
        # yacs' own words first: they are what searches and older scripts know.
        return ConfigError(f"Non-existent key: {key} ({where}); {fix}")
    mismatch = re.fullmatch(
        r"Type mismatch \(<class '(\w+)'> vs\. <class '\w+'>\) with values \((.*) vs\. (.*)\) "
        r"for config key: (\S+)",
        text,
    )
    if mismatch:
        wanted, default, value, key = mismatch.groups()
        return ConfigError(f"{key} {value} ({where}): must be of type {wanted}, like {default}")
    if text.startswith("Override list has odd length"):
        return ConfigError(
            f"KEY VALUE overrides {' '.join(opts)}: an odd number of words; every key needs a "
            "value (quote values with spaces: SOLVER.STEPS '(1000, 2000)')"
        )
    return error


class RunInProgressError(RuntimeError):
    """Another training holds the output folder."""


# The open lock file of this process's training (held until the process ends).
_OUTPUT_LOCK: Any = None
LOCK_FILE = ".training.lock"


def lock_output_dir(output_dir: str) -> None:
    """Hold ``OUTPUT_DIR/.training.lock`` for the rest of this process (the launching process
    of a training, rank 0's machine): a second training started in the same folder meanwhile is
    refused, naming the first's process; once that one has ended (the lock goes with its
    process, killed or not), ``--resume`` continues it.

    Raises:
        RunInProgressError: another process holds the lock.
    """
    global _OUTPUT_LOCK
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_FILE)
    lock = open(path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise RunInProgressError(
            f"OUTPUT_DIR {output_dir} is in use by another training ({holder}); wait for it to "
            "end (then --resume continues it), or give another OUTPUT_DIR"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"process {os.getpid()} on {socket.gethostname()}, started {time.ctime()}\n")
    lock.flush()
    _OUTPUT_LOCK = lock


_ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")


class _PlainFormatter(logging.Formatter):
    """A log file's formatter without the colour codes that Detectron2's config dump carries."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI_CODES.sub("", self.inner.format(record))


def plain_log_files(output_dir: str) -> None:
    """Set up Detectron2's loggers as ``default_setup`` will (the same calls: its
    ``setup_logger`` is cached), then make their ``log.txt`` handlers write without colour codes
    (the highlighted YAML dumps stay coloured on the console only). Call before
    ``default_setup``."""
    if not output_dir:
        return
    rank = comm.get_rank()
    loggers = [
        setup_logger(output_dir, distributed_rank=rank, name="fvcore"),
        setup_logger(output_dir, distributed_rank=rank),
    ]
    for log in loggers:
        for handler in log.handlers:
            name = os.path.basename(str(getattr(getattr(handler, "stream", None), "name", "")))
            is_file = name.startswith("log.txt")
            if is_file and not isinstance(handler.formatter, _PlainFormatter):
                handler.setFormatter(_PlainFormatter(handler.formatter or logging.Formatter()))


def setup(args: argparse.Namespace, cfg: CfgNode | None = None) -> CfgNode:
    """Prepare this process for ``cfg`` (composed by :func:`load_cfg` from ``args.config_file``
    and ``args.opts`` when None): register its datasets (a launched worker has none yet), then
    Detectron2's ``default_setup`` (loggers, environment info, ``OUTPUT_DIR/config.yaml``, seeds)
    and our ``backbones`` logger."""
    if cfg is None:
        cfg = load_cfg(args.config_file, args.opts)
    else:
        register_datasets_from_cfg(cfg)
    plain_log_files(cfg.OUTPUT_DIR)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="backbones")
    return cfg
