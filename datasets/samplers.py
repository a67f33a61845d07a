"""Evaluation sampler: an exact split of a list across processes, without padding.

``DistributedSampler`` pads the last ranks with repeated videos so that all get the same count; for
testing that would count some videos twice. Here rank r takes the contiguous block
``[r * n // world, (r + 1) * n // world)``: every video exactly once, block sizes differing by at most
one. Batches carry ``indices`` so that gathered predictions can be put back in list order.
"""
from torch.utils.data import Sampler


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
