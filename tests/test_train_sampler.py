"""Minority oversampling under DDP: one seeded weighted draw per epoch, split across ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrjobs.train.sampler import BalancedDistributedSampler, balance_classes


def ranks(classes, world, epoch, seed=0):
    out = []
    for r in range(world):
        s = BalancedDistributedSampler(classes, world, r, seed)
        s.set_epoch(epoch)
        out.append(np.asarray(list(s)))
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
def test_two_ranks_draw_disjoint_balanced_parts(world):
    classes = np.array([1] * 30 + [0] * 270)  # 10 % minority
    for epoch in range(3):
        parts = ranks(classes, world, epoch)
        assert len({len(p) for p in parts}) == 1  # same number of steps on every rank
        assert sum(len(p) for p in parts) >= 0.95 * len(classes)
        for i in range(world):
            for j in range(i + 1, world):
                assert not set(parts[i]) & set(parts[j]), "an index drawn by two ranks"
        drawn = classes[np.concatenate(parts)]
        assert 0.42 < drawn.mean() < 0.58, drawn.mean()  # ~50/50 although 10 % are positive
        for p in parts:  # each rank's share is balanced too, not just the union
            assert 0.3 < classes[p].mean() < 0.7


def test_draw_is_seeded_per_epoch():
    classes = np.array([1] * 20 + [0] * 80)
    assert all(np.array_equal(a, b) for a, b in zip(ranks(classes, 2, 4), ranks(classes, 2, 4)))
    assert not np.array_equal(ranks(classes, 2, 4)[0], ranks(classes, 2, 5)[0])
    assert not np.array_equal(ranks(classes, 2, 4, seed=1)[0], ranks(classes, 2, 4)[0])


def test_balance_classes_from_targets():
    assert balance_classes(torch.tensor([0, 1, 1])).tolist() == [0, 1, 1]
    assert balance_classes(torch.tensor([[0.0], [1.0]])).tolist() == [0, 1]
    assert balance_classes(torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]])).tolist() == [0, 1, 1]


def _rank_main(rank, world, port, classes, queue):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        s = BalancedDistributedSampler(classes, world, rank, seed=7)
        s.set_epoch(1)
        mine = list(s)
        parts = [None] * world
        dist.all_gather_object(parts, mine)
        if rank == 0:
            queue.put(parts)
    finally:
        dist.destroy_process_group()


def test_real_two_process_group_agrees_on_the_split():
    """Two real processes over gloo: each computes only its own part; gathered, they are the
    disjoint, equally long parts of one balanced draw."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    classes = np.array([1] * 15 + [0] * 85)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, classes, queue)) for r in range(2)]
    for p in procs:
        p.start()
    parts = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(parts[0]) == len(parts[1]) and not set(parts[0]) & set(parts[1])
    assert 0.4 < classes[np.array(parts[0] + parts[1])].mean() < 0.6
    assert [list(p) for p in ranks(classes, 2, 1, seed=7)] == parts
