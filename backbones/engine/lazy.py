"""Detectron2's LazyConfig training (its ``tools/lazyconfig_train_net.py``) on this project's
engine: loading a config with checked ``key=value`` overrides, the YAML keys the shared checks
read, the preflight of ``train.init_checkpoint``, and the training and evaluation loops with our
checkpointer, loop, divergence stop and loss curves. ``tools/lazyconfig_train_net.py`` is the
command line."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from detectron2.config import CfgNode, LazyConfig, instantiate
from detectron2.engine import default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from ..checkpoint import BackbonesCheckpointer
from ..config import WeightsUnavailableError
from ..data.coco_faults import DataFaultError
from ..errors import BackboneOptionError, DivergenceError
from ..modeling import ResNetSpec, make_resnet, make_resnet_fpn
from ..modeling.spec import SPEC_FIELDS
from .cli import DatasetFilesError, read_run_weights
from .config import CONFIGS_DIR, ConfigError, similar_config
from .ddp import create_ddp_model
from .distributed import LaunchError
from .hooks import LossCurveWriter
from .loop import ResumableAMPTrainer, ResumableSimpleTrainer

logger = logging.getLogger(__name__)

LAZY_CONFIGS = CONFIGS_DIR / "lazy"
# What a LazyConfig defines (Detectron2's configs/common/train.py and its lazyconfig tool).
EVAL_KEYS = ("model", "dataloader", "train")
TRAIN_KEYS = EVAL_KEYS + ("optimizer", "lr_multiplier")
# Our ResNet as model.backbone (the callable, or its dotted name in a config written as text).
_OUR_CONSTRUCTORS = (
    "backbones.make_resnet",
    "backbones.make_resnet_fpn",
    "backbones.modeling.make_resnet",
    "backbones.modeling.make_resnet_fpn",
)
# Keys an override may add to a node that is not a call: read here and by default_setup.
OPTIONAL_KEYS = ("train.seed", "train.cudnn_benchmark")
# The YAML keys in the messages of the shared checks (backbones.engine.cli), as written here.
_LAZY_WORDS = (
    ("MODEL.DEVICE ", "train.device="),
    ("SOLVER.IMS_PER_BATCH ", "dataloader.train.total_batch_size="),
    ("DATASETS.TRAIN", "dataloader.train.dataset.names"),
    ("DATASETS.TEST", "dataloader.test.dataset.names"),
    (" or BACKBONES.COCO_DATASETS", ""),
    ("MODEL.WEIGHTS", "train.init_checkpoint"),
    (
        "without data, try configs/mrcnn_r18_shapes.yaml",
        "without data, try configs/lazy/mrcnn_r18_shapes.py",
    ),
)


# ---------------------------------------------------------------------------------------------
# The config


def load_config(
    config_file: str, opts: Sequence[str] = (), *, train: bool = True, warn: bool = True
) -> DictConfig:
    """``LazyConfig.load(config_file)`` with the ``key=value`` overrides ``opts`` applied;
    ``train.device`` cuda becomes cpu on a machine without CUDA (with a warning if ``warn``).

    Raises:
        ConfigError: a missing or unreadable file, one that is not a LazyConfig (lacking the
            keys of :data:`TRAIN_KEYS`, or of :data:`EVAL_KEYS` without ``train``), an override
            that is not ``key=value`` or names a key the config does not have (with the closest).
    """
    if not os.path.isfile(config_file):
        similar = similar_config(config_file, LAZY_CONFIGS, (".py",))
        fix = f"did you mean {similar}?" if similar else "the LazyConfigs are in configs/lazy/"
        raise ConfigError(f"config file {config_file} does not exist; {fix}")
    try:
        cfg = LazyConfig.load(config_file)
    except (SyntaxError, ImportError, ValueError, OSError) as e:
        cause = f" ({e.__cause__})" if e.__cause__ is not None else ""
        raise ConfigError(f"{config_file}: {e}{cause}") from None
    missing = [key for key in (TRAIN_KEYS if train else EVAL_KEYS) if key not in cfg]
    if missing:
        raise ConfigError(
            f"{config_file} is not a LazyConfig: it defines no {', '.join(missing)} (the Python "
            "configs of configs/lazy/ are; a YAML config with MODEL, SOLVER, ... keys trains "
            "with tools/train_net.py)"
        )
    for override in opts:
        if override.startswith("--"):
            raise ConfigError(
                f"{override} after the key=value overrides: give the options first, then the "
                "overrides (they take the rest of the command line)"
            )
        key, equals, _ = override.partition("=")
        if not equals or not key.strip():
            raise ConfigError(
                f"override {override!r}: LazyConfig overrides are key=value, e.g. "
                "train.max_iter=100 (KEY VALUE pairs are for YAML configs and tools/train_net.py)"
            )
        key = key.strip()
        _check_key(cfg, key, config_file)
        before = OmegaConf.select(cfg, key.lstrip("+"), default=None)
        try:
            LazyConfig.apply_overrides(cfg, [override])
        except Exception as e:  # hydra's parser and OmegaConf: a value that does not parse
            raise ConfigError(f"override {override}: {' '.join(str(e).split())}") from None
        _check_type(key, before, OmegaConf.select(cfg, key.lstrip("+"), default=None))
    device = str(OmegaConf.select(cfg, "train.device", default="cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        if warn:
            logger.warning(
                "train.device=%s, but this machine has no CUDA: running on the CPU instead "
                "(add train.device=cpu to choose it and hide this line)",
                device,
            )
        cfg.train.device = "cpu"
    return cfg


def _keys(node: Any, prefix: str = "") -> Iterator[str]:
    """The dotted keys of a config (``OmegaConf.to_container``'s dicts), nodes included."""
    if isinstance(node, dict):
        for name, value in node.items():
            yield f"{prefix}{name}"
            yield from _keys(value, f"{prefix}{name}.")


def _check_key(cfg: DictConfig, key: str, config_file: str) -> None:
    """An override may change a key, add an argument to a call (a node with ``_target_``), or
    add any key when written ``+key=value`` (hydra's syntax for a new key)."""
    if key.startswith("+"):
        return
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if isinstance(parent, ListConfig) and name.isdigit() and int(name) < len(parent):
        return
    if isinstance(parent, DictConfig) and (name in parent or key in OPTIONAL_KEYS):
        return
    if isinstance(parent, DictConfig) and "_target_" in parent:
        _check_argument(parent._target_, key, name)
        return
    keys = list(_keys(OmegaConf.to_container(cfg, resolve=False)))
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.7)
    fix = f"did you mean {close[0]}?" if close else "the keys are in the config file"
    raise ConfigError(f"override {key}=...: {config_file} has no key {key}; {fix}")


def _check_argument(target: Any, key: str, name: str) -> None:
    """A new argument ``name`` of the call ``target`` (a callable or its dotted name) must be
    one of its parameters, unless it takes ``**kwargs`` (checked when the config is built)."""
    function = locate(target) if isinstance(target, str) else target
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # no signature to read: the call decides
        return
    if name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    close = difflib.get_close_matches(name, list(parameters), n=1, cutoff=0.6)
    fix = f"did you mean {close[0]}?" if close else f"it takes {', '.join(parameters)}"
    called = getattr(function, "__qualname__", str(target))
    raise ConfigError(f"override {key}=...: {called} takes no argument {name}; {fix}")


def _check_type(key: str, before: Any, after: Any) -> None:
    """An override keeps a number a number and a bool a bool (a LazyConfig has no schema)."""
    if before is None or after is None:
        return
    if isinstance(before, bool):
        ok, kind = isinstance(after, bool), "true or false"
    elif isinstance(before, (int, float)):
        ok, kind = isinstance(after, (int, float)) and not isinstance(after, bool), "a number"
    else:
        return
    if not ok:
        raise ConfigError(f"override {key}={after}: must be {kind}, like {before}")


def dataset_names(cfg: DictConfig, loader: str) -> tuple[str, ...]:
    """The dataset names ``dataloader.<loader>.dataset.names`` (a name or a list), or ()."""
    names = OmegaConf.select(cfg, f"dataloader.{loader}.dataset.names", default=None)
    if names is None:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def yaml_view(cfg: DictConfig, datasets: Sequence[Sequence[str]]) -> CfgNode:
    """The YAML config keys that the shared checks (``backbones.engine.cli``), the dataset
    registration and the checkpointer read, from a LazyConfig and ``--dataset`` triples:
    ``DATASETS.TRAIN/TEST``, ``BACKBONES.COCO_DATASETS``, ``SOLVER.IMS_PER_BATCH/BASE_LR`` and,
    for a detector with ``pixel_mean``, the input settings stored in checkpoints."""
    view = CfgNode(
        {
            "DATASETS": {
                "TRAIN": dataset_names(cfg, "train"),
                "TEST": dataset_names(cfg, "test"),
            },
            "BACKBONES": {
                "COCO_DATASETS": [list(entry) for entry in datasets],
                "TRUST_WEIGHTS_FILE": False,
                "SKIP_MISMATCHED": [],
            },
            "SOLVER": {
                "IMS_PER_BATCH": int(
                    OmegaConf.select(cfg, "dataloader.train.total_batch_size", default=0)
                ),
                "BASE_LR": float(OmegaConf.select(cfg, "optimizer.lr", default=0.0)),
                "REFERENCE_WORLD_SIZE": 0,
            },
        }
    )
    if OmegaConf.select(cfg, "model.pixel_mean", default=None) is not None:
        stride_in_1x1 = OmegaConf.select(cfg, "model.backbone.stride_in_1x1", default=None)
        if stride_in_1x1 is None:  # Detectron2's own ResNet node, or its default
            stride_in_1x1 = OmegaConf.select(
                cfg, "model.backbone.bottom_up.stages.stride_in_1x1", default=True
            )
        view.INPUT = CfgNode({"FORMAT": OmegaConf.select(cfg, "model.input_format") or "BGR"})
        view.MODEL = CfgNode(
            {
                "PIXEL_MEAN": list(cfg.model.pixel_mean),
                "PIXEL_STD": list(cfg.model.pixel_std),
                "RESNETS": {"STRIDE_IN_1X1": bool(stride_in_1x1)},
            }
        )
    return view


@contextmanager
def lazy_words() -> Iterator[None]:
    """The shared checks' errors, naming LazyConfig keys instead of the YAML ones."""
    try:
        yield
    except (
        ConfigError,
        LaunchError,
        DatasetFilesError,
        DataFaultError,
        WeightsUnavailableError,
    ) as error:
        message = str(error)
        for yaml_words, words in _LAZY_WORDS:
            message = message.replace(yaml_words, words)
        raise type(error)(message) from None


def check_init_checkpoint(cfg: DictConfig, *, resume: bool = False) -> str | None:
    """Resolve ``train.init_checkpoint`` before anything is built, as ``check_weights`` does
    for a YAML config: the local file, the copy in Detectron2's download cache, or a download
    into it; read once (the checkpointer takes it from there). With our ResNet in
    ``model.backbone`` (``make_resnet_fpn`` or ``make_resnet``) the file's network must be the
    config's, resolved by :meth:`~backbones.ResNetSpec.from_weights`. Nothing to do without a
    checkpoint, or with ``resume`` and one in ``train.output_dir``.

    Returns:
        the local file, None when nothing is loaded from it.

    Raises:
        backbones.config.WeightsUnavailableError: no file and no download, naming the address,
            the cache path and the offline fix.
        backbones.weights.WeightsFormatError: not a weights file, naming it.
        ConfigError: a file of another depth than the config's, naming both.
    """
    url = OmegaConf.select(cfg, "train.init_checkpoint", default="")
    output_dir = OmegaConf.select(cfg, "train.output_dir", default="")
    found = read_run_weights(url, output_dir, resume=resume, trusted=False)
    if found is None:
        return None
    path, weights = found
    node = OmegaConf.select(cfg, "model.backbone", default=None)
    target = getattr(node, "_target_", None) if isinstance(node, DictConfig) else None
    if target in (make_resnet, make_resnet_fpn) or target in _OUR_CONSTRUCTORS:
        # Lists (stage_blocks, deform_on_per_stage) become tuples in the spec itself.
        given = {k: node[k] for k in SPEC_FIELDS if k in node and node[k] is not None}
        try:  # the file's network against the config's: the one resolution of it
            ResNetSpec.from_weights(weights, **given)
        except BackboneOptionError as error:
            raise ConfigError(
                f"train.init_checkpoint {url}: model.backbone.{error.option}={error.value!r} "
                f"but {error.reason}; set model.backbone.{error.option}={error.allowed} or give "
                "a file of the config's network"
            ) from None
    return path


# ---------------------------------------------------------------------------------------------
# Training and evaluation


def build_model(cfg: DictConfig) -> nn.Module:
    """``instantiate(cfg.model)`` on ``train.device``; the weights are the checkpointer's."""
    with warnings.catch_warnings():
        if cfg.train.init_checkpoint:
            # make_resnet's warning about FrozenBN without weights (constructors.py's
            # UNTRAINED_FROZEN_BN): train.init_checkpoint is loaded right after the build.
            warnings.filterwarnings("ignore", message=".*norm='FrozenBN' with no weights")
        try:
            model = instantiate(cfg.model)
        except TypeError as e:
            if "argument" not in str(e):  # not an argument the config gives or lacks: a bug
                raise
            raise ConfigError(f"model: {e} (a key of the config, or an override)") from None
    logger.info("Model:\n%s", model)
    return model.to(cfg.train.device)


def do_test(cfg: DictConfig, model: nn.Module) -> dict[str, Any]:
    """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator`` (nothing when
    the config has no evaluator); returns the metrics by task."""
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(results)
    return results


class _DropDivergenceTraceback(logging.Filter):
    # Detectron2's loop logs every exception with its traceback before re-raising it; a
    # divergence is said once, as one message (as backbones.engine.Trainer does).
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DivergenceError))


def do_train(cfg: DictConfig, view: CfgNode, *, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` as Detectron2's lazyconfig tool does, with our loop, checkpointer and loss
    curves; returns the last evaluation's metrics.

    Raises:
        DivergenceError: a loss or step that is not finite, naming the last good checkpoint.
    """
    model = build_model(cfg)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    loop = (ResumableAMPTrainer if cfg.train.amp.enabled else ResumableSimpleTrainer)(
        model, train_loader, optimizer
    )
    # Every process draws from the same seed; a negative or missing one is drawn once.
    seed = int(cfg.train.get("seed", -1))
    loop.seed = seed if seed >= 0 else comm.shared_random_seed()
    output_dir = cfg.train.output_dir
    checkpointer = BackbonesCheckpointer(
        model,
        output_dir,
        cfg=view if "INPUT" in view else None,
        optimizer=optimizer,
        trainer=loop,
    )
    results: dict[str, Any] = {}

    def evaluate() -> dict[str, Any]:
        results.clear()
        results.update(do_test(cfg, model))
        return results

    main = comm.is_main_process()
    loop.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            (
                hooks.PeriodicWriter(
                    default_writers(output_dir, cfg.train.max_iter), period=cfg.train.log_period
                )
                if main
                else None
            ),
            # After the PeriodicWriter, which writes the metrics.json it reads.
            LossCurveWriter(output_dir, cfg.train.checkpointer.period) if main else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # A checkpoint holds the iteration that had just finished.
    start_iter = loop.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    loop_logger = logging.getLogger("detectron2.engine.train_loop")
    drop = _DropDivergenceTraceback()
    loop_logger.addFilter(drop)
    try:
        loop.train(start_iter, cfg.train.max_iter)
    except DivergenceError as error:
        if error.iteration < 0:
            error.iteration = loop.iter
        if error.lr is None:
            error.lr = optimizer.param_groups[0]["lr"]
        if checkpointer.has_checkpoint():
            error.last_checkpoint = checkpointer.get_checkpoint_file()
        raise
    finally:
        loop_logger.removeFilter(drop)
    return results
