"""Samplers: the training order shared by one process and many, and an exact split for evaluation.

Training (:class:`StridedPermutationSampler`): every epoch has one permutation of the list, a function of
``SEED`` and the epoch, and rank r of N reads every N-th video of it from position r. N processes x batch
B thus read, step for step, the videos of one process x batch N * B (docs/distributed.md, section 4).

Evaluation (:class:`ExactSplitSampler`): ``DistributedSampler`` pads the last ranks with repeated videos
so that all get the same count; for testing that would count some videos twice. Here rank r takes the
contiguous block ``[r * n // world, (r + 1) * n // world)``: every video exactly once, block sizes
differing by at most one. Batches carry ``indices`` so that gathered predictions can be put back in list
order.
"""
import math

import torch
from torch.utils.data import DistributedSampler, Sampler

from utils.seeding import epoch_seed


class StridedPermutationSampler(DistributedSampler):
    """This rank's stride of the epoch's permutation, padded like ``DistributedSampler`` (the padding
    repeats the first videos, so that every rank reads ``ceil(n / world_size)``).

    The permutation is the one a single shuffling ``DataLoader`` drew before this sampler existed, so
    that single-process runs keep their order and the demo its figures: that loader's generator,
    seeded with ``epoch_seed(SEED, epoch)``, gave its first number to the workers' base seed and the
    permutation next. ``set_epoch`` (the engine's job) selects the epoch.

    Args:
        dataset: the training dataset.
        rank: this process's rank.
        world_size: number of processes.
        seed: ``SEED``.
    """

    def __init__(self, dataset, rank, world_size, seed):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)

    def permutation(self):
        """The epoch's order of the whole list, the same on every rank."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the workers' base seed, see above
        return torch.randperm(len(self.dataset), generator=generator).tolist()

    def __iter__(self):
        order = self.permutation()
        order += (order * math.ceil(self.total_size / len(order)))[:self.total_size - len(order)]
        return iter(order[self.rank:self.total_size:self.num_replicas])


def split_bounds(num_samples, rank, world_size):
    """``(start, stop)`` of rank ``rank``'s block of ``num_samples`` items split over ``world_size``."""
    if not 0 <= rank < world_size:
        raise ValueError(f'rank {rank} is outside [0, {world_size})')
    return rank * num_samples // world_size, (rank + 1) * num_samples // world_size


class ExactSplitSampler(Sampler):
    """Yield this rank's contiguous block of dataset indices, in order.

    Args:
        num_samples: length of the dataset.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(self, num_samples, rank, world_size):
        self.start, self.stop = split_bounds(num_samples, rank, world_size)

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self):
        return self.stop - self.start
