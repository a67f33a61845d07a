"""One code path for torchrun DDP, a single GPU and the CPU.

torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) decides: with it the process group is
initialised (NCCL on CUDA, gloo on the CPU), without it the program runs as a single process and every
helper here degrades to a no-op.
"""
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: the device this process computes on.
    """
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self):
        """True on the process that writes files and logs (rank 0)."""
        return self.rank == 0


def unwrap_model(model):
    """The model inside a ``DistributedDataParallel`` wrapper (its ``.module``), or ``model`` itself."""
    return getattr(model, 'module', model)


def launched_by_torchrun():
    """True when torchrun (or torch.distributed.launch) started this process."""
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ


def init_distributed():
    """Initialise the process group if torchrun asks for one and pick this process's device.

    Returns:
        DistributedContext of this process.
    """
    if not launched_by_torchrun():
        device = torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')
        return DistributedContext(0, 1, 0, device)
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device('cuda', local_rank), 'nccl'
    else:
        device, backend = torch.device('cpu'), 'gloo'
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    context = DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)
    logger.info('process group initialised: backend %s, rank %d of %d, device %s', backend,
                context.rank, context.world_size, device)
    return context


def cleanup_distributed():
    """Destroy the process group, if any (so that ``main`` can run again in the same process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed():
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank():
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    """True on rank 0, the process that writes files."""
    return get_rank() == 0


def barrier():
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce_mean(tensor):
    """Mean of ``tensor`` over all processes (returns ``tensor`` itself in a single process)."""
    if not is_distributed():
        return tensor
    reduced = tensor.clone()
    dist.all_reduce(reduced)
    return reduced / get_world_size()


def all_gather_object(value):
    """List of ``value`` from every process, ordered by rank (``[value]`` in a single process)."""
    if not is_distributed():
        return [value]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def all_gather_variable(tensor):
    """Concatenate tensors whose first dimension differs between processes, in rank order.

    Args:
        tensor: ``[n_rank, ...]`` on this process's device; the other dimensions agree across ranks.

    Returns:
        ``[sum of n_rank, ...]`` on every process.
    """
    if not is_distributed():
        return tensor
    world_size = get_world_size()
    length = torch.tensor([tensor.shape[0]], device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(world_size)]
    dist.all_gather(lengths, length)
    lengths = [int(n.item()) for n in lengths]
    # all_gather needs equal shapes: pad to the longest shard, then cut each back to its length.
    padded = tensor.new_zeros((max(lengths),) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    shards = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(shards, padded)
    return torch.cat([shard[:n] for shard, n in zip(shards, lengths)])


def gather_predictions(tensors, indices):
    """Gather per-video results of all processes, each video exactly once, ordered by its index.

    Args:
        tensors: dict name -> ``[n, ...]`` tensors of this process (scores, labels).
        indices: int64 ``[n]`` positions of the videos in the dataset's list.

    Returns:
        (dict name -> ``[N, ...]``, int64 ``[N]`` sorted unique indices). A video that several processes
        evaluated (a padding sampler) is kept once.
    """
    all_indices = all_gather_variable(indices)
    gathered = {name: all_gather_variable(value) for name, value in tensors.items()}
    unique_indices, inverse = torch.unique(all_indices, sorted=True, return_inverse=True)
    positions = torch.arange(all_indices.shape[0], device=all_indices.device)
    first_position = torch.full_like(unique_indices, all_indices.shape[0])
    first_position = first_position.scatter_reduce(0, inverse, positions, reduce='amin')
    return {name: value[first_position] for name, value in gathered.items()}, unique_indices
