"""Gathering variable-length predictions over 2 gloo processes: every video once, in index order."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils import distributed

NUM_CLASSES = 3
# Rank 0 holds 4 videos, rank 1 holds 3, one of which (index 6) rank 0 also evaluated, as a padding
# sampler would do. Indices arrive unsorted.
SHARDS = {0: [6, 0, 2, 4], 1: [5, 1, 6]}


def scores_of(indices):
    """Per-video rows that identify the video: row i = (i, 10 i, 100 i)."""
    return torch.tensor([[index, 10 * index, 100 * index] for index in indices], dtype=torch.float32)


def gather_worker(rank, world_size, init_file):
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    try:
        indices = torch.tensor(SHARDS[rank])
        gathered, unique_indices = distributed.gather_predictions(
            {'scores': scores_of(SHARDS[rank]), 'labels': indices % NUM_CLASSES}, indices)
        expected = sorted(set(SHARDS[0]) | set(SHARDS[1]))
        assert unique_indices.tolist() == expected
        assert torch.equal(gathered['scores'], scores_of(expected))
        assert gathered['labels'].tolist() == [index % NUM_CLASSES for index in expected]
        assert distributed.all_reduce_mean(torch.tensor(float(rank))).item() == 0.5
        assert distributed.all_gather_object({'rank': rank}) == [{'rank': 0}, {'rank': 1}]
        # A rank without any video still takes part.
        empty = torch.zeros(0, dtype=torch.long)
        mine = indices if rank == 0 else empty
        _, only_rank0 = distributed.gather_predictions({'labels': mine % NUM_CLASSES}, mine)
        assert only_rank0.tolist() == sorted(set(SHARDS[0]))
    finally:
        dist.destroy_process_group()


def test_gather_predictions_over_two_processes(tmp_path):
    mp.spawn(gather_worker, args=(2, str(tmp_path / 'init')), nprocs=2, join=True)


def test_single_process_helpers_are_no_ops(monkeypatch):
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        monkeypatch.delenv(name, raising=False)
    context = distributed.init_distributed()
    assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
    assert not distributed.is_distributed() and distributed.get_world_size() == 1
    indices = torch.tensor([3, 1, 3])
    gathered, unique_indices = distributed.gather_predictions({'labels': torch.tensor([30, 10, 31])}, indices)
    assert unique_indices.tolist() == [1, 3] and gathered['labels'].tolist() == [10, 30]
