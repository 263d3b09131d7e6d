"""A training data loader whose every batch is a function of (seed, iteration): resumable at
any iteration, and the same images whatever the number of processes.

Detectron2's loader draws its sample order from a generator that lives in each process and its
augmentations from each data-loader worker's global RNGs, so a training resumed from a
checkpoint sees other images, other crops and flips, than the run it continues. Here:

- :class:`ResumableBatchSampler` yields *global* batches of ``SOLVER.IMS_PER_BATCH`` images:
  epoch ``e`` is a permutation drawn from ``(seed, e)`` (with ``RepeatFactorTrainingSampler``,
  the repeats too), grouped by aspect ratio like ``DATALOADER.ASPECT_RATIO_GROUPING``, and each
  process takes its contiguous slice. Batch ``i`` is used at iteration ``i``; ``start`` skips
  to any iteration without reading an image.
- :class:`SeededMapDataset` maps each sample with the global RNGs (``random``, ``numpy``,
  ``torch``) seeded from ``(seed, iteration, position in the global batch)`` and restored
  afterwards, so an augmentation draws the same numbers in any worker, in the main process, on
  any rank.

So 2 processes x batch 1 see, image for image, what 1 process x batch 2 sees, and a run
resumed at iteration ``i`` reads the batches the uninterrupted run read.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.utils.data as torchdata
from detectron2.config import CfgNode
from detectron2.data import (
    DatasetFromList,
    DatasetMapper,
    MetadataCatalog,
    get_detection_dataset_dicts,
)
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.utils import comm

from ..config.defaults import BAD_IMAGES
from ..errors import check_choice

__all__ = [
    "RESUMABLE_SAMPLERS",
    "ResumableBatchSampler",
    "SeededMapDataset",
    "UnreadableImageError",
    "build_resumable_train_loader",
    "derive_seed",
    "seed_all_from",
]

logger = logging.getLogger(__name__)

# ``DATALOADER.SAMPLER_TRAIN`` values this loader reproduces; others use Detectron2's loader.
RESUMABLE_SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler")
# How often a sample whose mapper returns None (e.g. every box cropped away) is replaced by
# another one before the loader gives up.
_MAX_RETRIES = 10


def derive_seed(*entropy: int) -> int:
    """A 63-bit seed from integers (e.g. seed, iteration, rank), well mixed by numpy's
    ``SeedSequence``: nearby inputs give unrelated seeds."""
    words = np.random.SeedSequence([int(e) & 0xFFFFFFFFFFFFFFFF for e in entropy])
    low, high = words.generate_state(2, dtype=np.uint32)
    return (int(high) << 31 | int(low) >> 1) & 0x7FFFFFFFFFFFFFFF


def seed_all_from(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and every CUDA device)
    from one ``derive_seed`` value."""
    random.seed(seed)
    np.random.seed(np.random.SeedSequence(seed).generate_state(4))
    torch.manual_seed(seed)


def _rng_state() -> tuple[Any, Any, torch.Tensor]:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_rng_state(state: tuple[Any, Any, torch.Tensor]) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


class ResumableBatchSampler(torchdata.Sampler):
    """Infinite batches of ``(dataset index, sample seed)`` for one process.

    Args:
        aspect_groups: one group id per dataset item (e.g. 0 for landscape, 1 for portrait);
            a global batch holds one group only. All zeros to mix freely.
        total_batch_size: images per iteration over all processes.
        seed: the order and the sample seeds derive from it.
        repeat_factors: per-item repeat factors (``RepeatFactorTrainingSampler``): each epoch
            repeats item ``k`` ``floor(r_k)`` times, plus once with probability
            ``r_k - floor(r_k)``. ``None``: each item once.
        rank, world_size: this process's slice of each global batch.
        start: the iteration the next ``iter()`` begins at.
    """

    def __init__(
        self,
        aspect_groups: Sequence[int],
        *,
        total_batch_size: int,
        seed: int,
        repeat_factors: Sequence[float] | None = None,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        if len(aspect_groups) == 0:
            raise ValueError("The training dataset is empty: there is nothing to sample")
        if total_batch_size <= 0 or total_batch_size % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={total_batch_size} must be a positive multiple of the "
                f"number of processes ({world_size})"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if repeat_factors is not None and len(repeat_factors) != len(aspect_groups):
            raise ValueError(
                f"{len(repeat_factors)} repeat factors for {len(aspect_groups)} dataset items"
            )
        self.groups = np.asarray(aspect_groups, dtype=np.int64)
        self.repeat_factors = (
            None if repeat_factors is None else np.asarray(repeat_factors, dtype=np.float64)
        )
        self.total_batch_size = total_batch_size
        self.batch_size = total_batch_size // world_size
        self.rank = rank
        self.seed = seed
        self.start = start

    def _epoch(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng(derive_seed(self.seed, epoch))
        if self.repeat_factors is None:
            indices = np.arange(len(self.groups))
        else:
            whole = np.floor(self.repeat_factors)
            counts = whole + (rng.random(len(whole)) < self.repeat_factors - whole)
            indices = np.repeat(np.arange(len(whole)), counts.astype(np.int64))
        return indices[rng.permutation(len(indices))]

    def global_batches(self) -> Iterator[list[int]]:
        """Every global batch from iteration 0 on: dataset indices, one aspect group each
        (the group that fills first is emitted first, as Detectron2's grouping does)."""
        buckets: dict[int, list[int]] = {}
        epoch = 0
        while True:
            order = self._epoch(epoch)
            if len(order) == 0:
                raise ValueError("An epoch of the training set is empty (all repeat factors are 0)")
            for index in order.tolist():
                bucket = buckets.setdefault(int(self.groups[index]), [])
                bucket.append(index)
                if len(bucket) == self.total_batch_size:
                    yield bucket.copy()
                    bucket.clear()
            epoch += 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        lo = self.rank * self.batch_size
        for iteration, batch in enumerate(self.global_batches()):
            if iteration < self.start:
                continue
            yield [
                (index, derive_seed(self.seed, iteration, lo + j))
                for j, index in enumerate(batch[lo : lo + self.batch_size])
            ]


class UnreadableImageError(OSError):
    """A training image that cannot be read, named with its dataset and index."""


class SeededMapDataset(torchdata.Dataset):
    """``mapper(dataset[index])`` for an ``(index, seed)`` key, with the global RNGs seeded from
    ``seed`` during the call and restored after it. A sample the mapper drops (``None``) is
    replaced by another index drawn from the same seed.

    An image the mapper cannot read (an ``OSError``, or Detectron2's ``SizeMismatchError``)
    raises :class:`UnreadableImageError` naming it (``bad_images="stop"``), or is skipped like a
    dropped sample, with a warning and the count so far (``"skip"``). ``describe(item, index)``
    names an item (default: its ``file_name`` and index)."""

    def __init__(
        self,
        dataset: Sequence[Any],
        mapper: Callable[[Any], Any],
        *,
        bad_images: str = "stop",
        describe: Callable[[Any, int], str] | None = None,
    ) -> None:
        self.dataset = dataset
        self.mapper = mapper
        self.bad_images = bad_images
        self.describe = describe or _file_and_index
        self.skipped = 0

    def _map(self, index: int) -> Any:
        item = self.dataset[index]
        try:
            return self.mapper(item)
        except (OSError, SizeMismatchError) as e:
            what = self.describe(item, index)
            reason = " ".join(str(e).split())
            if self.bad_images == "stop":
                raise UnreadableImageError(
                    f"{what} cannot be read: {reason}. Fix or remove the file, or set "
                    "BACKBONES.BAD_IMAGES skip to train without such images"
                ) from None
            self.skipped += 1
            logger.warning(
                "skipped %s: cannot be read: %s (%d skipped so far in this process; "
                "BACKBONES.BAD_IMAGES skip)", what, reason, self.skipped,
            )  # fmt: skip
            return None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        state = _rng_state()
        try:
            for attempt in range(_MAX_RETRIES):
                seed_all_from(derive_seed(seed, attempt))
                data = self._map(index)
                if data is not None:
                    return data
                index = random.randrange(len(self.dataset))
        finally:
            _set_rng_state(state)
        raise RuntimeError(
            f"The mapper dropped {_MAX_RETRIES} samples in a row (the last: dataset item "
            f"{index}); check DATALOADER.FILTER_EMPTY_ANNOTATIONS and the augmentations"
        )


def _aspect_groups(dicts: Sequence[dict], grouping: bool) -> list[int]:
    # Detectron2's AspectRatioGroupedDataset: 0 when wider than tall, else 1.
    if not grouping:
        return [0] * len(dicts)
    return [0 if d["width"] > d["height"] else 1 for d in dicts]


def build_resumable_train_loader(
    cfg: CfgNode,
    mapper: Callable[[dict], Any] | None = None,
    *,
    seed: int,
    rank: int | None = None,
    world_size: int | None = None,
) -> torchdata.DataLoader:
    """The training loader of ``cfg`` (``DATASETS.TRAIN``, ``DATALOADER.*``,
    ``SOLVER.IMS_PER_BATCH`` over all processes), deterministic in ``seed``.

    Returns:
        a ``DataLoader`` yielding lists of mapped dicts (this process's share of a global
        batch); ``loader.batch_sampler`` is the :class:`ResumableBatchSampler`, whose
        ``start`` and ``seed`` may be set before the first ``iter()``.

    Raises:
        ValueError: a ``DATALOADER.SAMPLER_TRAIN`` other than :data:`RESUMABLE_SAMPLERS`.
    """
    sampler_name = cfg.DATALOADER.SAMPLER_TRAIN
    if sampler_name not in RESUMABLE_SAMPLERS:
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN={sampler_name!r} cannot be resumed exactly; "
            f"the resumable loader takes {', '.join(RESUMABLE_SAMPLERS)}. Set "
            "BACKBONES.TRAIN_LOADER detectron2 to use Detectron2's loader"
        )
    rank = comm.get_rank() if rank is None else rank
    world_size = comm.get_world_size() if world_size is None else world_size
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=(
            cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
        ),
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    repeat_factors = None
    if sampler_name == "RepeatFactorTrainingSampler":
        repeat_factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dicts, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
        ).tolist()
    sampler = ResumableBatchSampler(
        _aspect_groups(dicts, cfg.DATALOADER.ASPECT_RATIO_GROUPING),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        seed=seed,
        repeat_factors=repeat_factors,
        rank=rank,
        world_size=world_size,
    )
    check_choice("BACKBONES.BAD_IMAGES", cfg.BACKBONES.BAD_IMAGES, BAD_IMAGES)
    dataset = SeededMapDataset(
        DatasetFromList(dicts, copy=False),
        mapper or DatasetMapper(cfg, True),
        bad_images=cfg.BACKBONES.BAD_IMAGES,
        describe=_ItemNames(cfg.DATASETS.TRAIN),
    )
    logger.info(
        "Resumable training loader: %d images, %d per process of %d per iteration, %s, %d workers",
        len(dicts),
        sampler.batch_size,
        sampler.total_batch_size,
        sampler_name,
        cfg.DATALOADER.NUM_WORKERS,
    )
    return torchdata.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=_no_collation,
        # Its own generator: starting workers then draws nothing from the global torch RNG.
        generator=torch.Generator().manual_seed(seed),
    )


def _file_and_index(item: dict, index: int) -> str:
    """An item named by its file and index (module-level: picklable for the workers)."""
    return f"{item.get('file_name')} (item {index})"


class _ItemNames:
    """An item of ``DATASETS.TRAIN`` named by its file, its dataset (the one whose image folder
    holds the file) and its index in the training list (picklable: for the workers)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.roots = []
        for name in names:
            root = (
                MetadataCatalog.get(name).get("image_root", None)
                if name in MetadataCatalog
                else None
            )
            self.roots.append((name, os.path.abspath(root) if root else None))

    def __call__(self, item: dict, index: int) -> str:
        path = os.path.abspath(str(item.get("file_name")))
        found = [n for n, root in self.roots if root and path.startswith(root + os.sep)]
        names = found[:1] or [n for n, _ in self.roots]
        return (
            f"{item.get('file_name')} (dataset {' or '.join(names)}, image id "
            f"{item.get('image_id')}, item {index} of the training list)"
        )


def _no_collation(batch: list[Any]) -> list[Any]:
    return batch
