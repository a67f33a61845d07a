"""One code path for torchrun DDP, a single GPU and the CPU.

torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) decides: with it the process group is
initialised (NCCL on CUDA, gloo on the CPU), without it the program runs as a single process and every
helper here degrades to a no-op. A worker group that torchrun restarts (``--max-restarts``) forms its
process group afresh, whatever the order in which its workers arrive (:func:`restart_safe_rendezvous`).
"""
import datetime
import logging
import os
import time
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# How long a worker waits for the others at the rendezvous store: as long as gloo's default process-group
# timeout, so that a rank held up at start-up (imports, a data check) is waited for, not failed.
STORE_TIMEOUT = datetime.timedelta(minutes=30)
# Namespace of this project's keys in the store of torchrun's agent, and how often rank 0 looks there.
HANDSHAKE_PREFIX = 'dkclip/rendezvous'
HANDSHAKE_POLL_S = 0.05


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
        dist.init_process_group(backend=backend, **restart_safe_rendezvous())
    context = DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)
    logger.info('process group initialised: backend %s, rank %d of %d, device %s', backend,
                context.rank, context.world_size, device)
    return context


def elastic_restart_count():
    """How often this process's torchrun agent has restarted its workers: 0 in the first round and
    outside torchrun. Per agent, not per job: see :func:`group_was_restarted`."""
    return int(os.environ.get('TORCHELASTIC_RESTART_COUNT', 0))


def group_was_restarted():
    """Whether torchrun has restarted this worker group (``--max-restarts``), the same answer on every
    process. An agent that restarts its workers because another node's failed does not count it as a
    restart (pytorch/pytorch#108158), so the largest count over all processes decides."""
    return max(all_gather_object(elastic_restart_count())) > 0


def elastic_run_id():
    """torchrun's id of this job (``--rdzv_id``; a random one with ``--standalone``); '' outside torchrun."""
    return os.environ.get('TORCHELASTIC_RUN_ID', '')


def restart_safe_rendezvous():
    """The ``init_process_group`` arguments that form the group on a store of this round's own.

    torchrun's agent serves one key-value store for every round of a job
    (``TORCHELASTIC_USE_AGENT_STORE``), and ``env://`` forms the group on it as it is: the addresses the
    previous round's workers published stay in it, and a restarted worker that reads them before the
    new rank 0 has overwritten them connects to a process that is gone (gloo: "connectFullMesh failed
    ... Connection refused"; NCCL exchanges its id through the same store). torchrun's restart count
    cannot name the round, as it differs between agents. So rank 0 hosts a new store, and hands its
    port through the agent's store only to workers that asked for it with a token made in this round
    (docs/distributed.md, section 1).

    Returns:
        dict of ``store``, ``rank``, ``world_size`` under torchrun's agent store, else {} (``env://``:
        rank 0 hosts a fresh store for every start of the group, as under SLURM).
    """
    if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') != str(True):
        return {}
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    agent_store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), is_master=False,
                                timeout=STORE_TIMEOUT)
    handshake = dist.PrefixStore(HANDSHAKE_PREFIX, agent_store)
    store = _host_round_store(handshake, world_size) if rank == 0 else _join_round_store(handshake, rank)
    return {'store': store, 'rank': rank, 'world_size': world_size}


def _join_round_store(handshake, rank):
    """Ranks > 0: ask for the round's store with a new token and connect to the port rank 0 answers."""
    token = uuid.uuid4().hex  # only a rank 0 of this round can have seen it
    handshake.set(f'asking/{rank}', token)
    handshake.wait([f'answer/{token}'])
    port = int(handshake.get(f'answer/{token}'))
    store = dist.TCPStore(os.environ['MASTER_ADDR'], port, is_master=False, timeout=STORE_TIMEOUT)
    store.set(f'joined/{rank}', token)
    return store


def _host_round_store(handshake, world_size):
    """Rank 0: a new store on a free port, whose port it gives to every token asked until all ranks joined.

    A rank's token may still be its predecessor's when read; answering it is harmless, and the new
    token is answered when it appears.
    """
    store = dist.TCPStore(os.environ['MASTER_ADDR'], 0, is_master=True, wait_for_workers=False,
                          timeout=STORE_TIMEOUT)
    answered, waiting = set(), list(range(1, world_size))
    deadline = time.monotonic() + STORE_TIMEOUT.total_seconds()
    while True:
        for rank in waiting:
            token = handshake.get(f'asking/{rank}').decode() if handshake.check([f'asking/{rank}']) else None
            if token is not None and token not in answered:
                handshake.set(f'answer/{token}', str(store.port))
                answered.add(token)
        waiting = [rank for rank in waiting if not store.check([f'joined/{rank}'])]
        if not waiting:
            return store
        if time.monotonic() > deadline:
            raise TimeoutError(f'ranks {waiting} did not join the process group within {STORE_TIMEOUT}')
        time.sleep(HANDSHAKE_POLL_S)


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
