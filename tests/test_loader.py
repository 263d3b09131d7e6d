"""The resumable training loader (backbones.data.loader): batches as a function of (seed,
iteration), split across processes, seeded augmentations; and the loop's divergence report."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from backbones.data.loader import (
    ResumableBatchSampler,
    SeededMapDataset,
    derive_seed,
    seed_all_from,
)
from backbones.engine.loop import describe_nonfinite


def batches(sampler: ResumableBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), n))


def test_start_skips_to_the_batches_of_a_full_run():
    groups = [0, 1] * 7 + [0]
    full = batches(ResumableBatchSampler(groups, total_batch_size=4, seed=5), 12)
    resumed = batches(ResumableBatchSampler(groups, total_batch_size=4, seed=5, start=7), 5)
    assert resumed == full[7:]
    other_seed = batches(ResumableBatchSampler(groups, total_batch_size=4, seed=6), 12)
    assert other_seed != full


def test_processes_split_the_global_batch_of_one_process():
    groups = [0] * 10
    one = batches(ResumableBatchSampler(groups, total_batch_size=4, seed=1), 6)
    ranks = [
        batches(ResumableBatchSampler(groups, total_batch_size=4, seed=1, rank=r, world_size=2), 6)
        for r in range(2)
    ]
    assert [ranks[0][i] + ranks[1][i] for i in range(6)] == one
    assert all(len(b) == 2 for r in ranks for b in r)


def test_aspect_groups_and_epochs():
    groups = [0, 0, 0, 1, 1, 1, 1, 1]
    sampler = ResumableBatchSampler(groups, total_batch_size=2, seed=0)
    stream = [b for b in itertools.islice(sampler.global_batches(), 40)]
    assert all(len({groups[i] for i in b}) == 1 for b in stream)
    counts = np.bincount([i for b in stream for i in b], minlength=len(groups))
    assert counts.min() >= 8  # 80 draws over 8 items: every item comes back each epoch


def test_repeat_factors_repeat_items():
    sampler = ResumableBatchSampler(
        [0] * 4, total_batch_size=2, seed=0, repeat_factors=[3, 1, 1, 0]
    )
    drawn = [i for b in itertools.islice(sampler.global_batches(), 50) for i in b]
    counts = np.bincount(drawn, minlength=4)
    assert counts[3] == 0 and counts[0] == 3 * counts[1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(aspect_groups=[], total_batch_size=2), "empty"),
        (dict(aspect_groups=[0], total_batch_size=3, world_size=2), "multiple"),
        (dict(aspect_groups=[0], total_batch_size=2, world_size=2, rank=2), "rank 2"),
        (dict(aspect_groups=[0], total_batch_size=2, repeat_factors=[1, 1]), "repeat factors"),
    ],
)
def test_sampler_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResumableBatchSampler(seed=0, **kwargs)


def _augment(item: int) -> tuple[int, float, float, float]:
    return item, random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seeded_map_is_deterministic_and_restores_the_global_rngs():
    dataset = SeededMapDataset(list(range(5)), _augment)
    seed_all_from(123)
    before = (random.random(), np.random.rand(), torch.rand(()))
    seed_all_from(123)
    first = dataset[(2, 99)]
    after = (random.random(), np.random.rand(), torch.rand(()))
    assert after == before  # the mapper's draws did not move the global streams
    assert dataset[(2, 99)] == first
    assert dataset[(2, 98)] != first


def test_seeded_map_replaces_dropped_samples_and_gives_up():
    dataset = SeededMapDataset(list(range(5)), lambda x: None if x == 0 else x)
    assert dataset[(0, 7)] == dataset[(0, 7)] != 0
    with pytest.raises(RuntimeError, match="dropped 10 samples"):
        SeededMapDataset([0], lambda x: None)[(0, 1)]


def test_derive_seed_mixes():
    seeds = {derive_seed(0, i, r) for i in range(100) for r in range(4)}
    assert len(seeds) == 400 and all(0 <= s < 2**63 for s in seeds)


def test_describe_nonfinite_names_the_term_and_rank():
    assert describe_nonfinite([{"loss_cls": 0.5}, {"loss_cls": 0.4}]) is None
    text = describe_nonfinite(
        [{"loss_cls": 0.5, "loss_box": 1.0}, {"loss_cls": 0.4, "loss_box": float("nan")}]
    )
    assert text == "loss_box = nan (rank 1); loss_cls = 0.4"
    assert describe_nonfinite([{"loss_cls": float("inf")}]) == "loss_cls = inf"
