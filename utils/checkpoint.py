"""Complete, atomic, ``weights_only``-safe training checkpoints.

A checkpoint holds everything needed to continue a run as if it had not stopped: the model (without
DDP's ``module.`` prefix, so it loads into the official release's model and back), optimizer,
scheduler, gradient scaler, epoch, optimizer-update count, best metrics, the config as YAML text and
the random-number states of every process. Only plain types and tensors are stored, so that
``torch.load(..., weights_only=True)`` reads it.
"""
import logging
import os
import random

import numpy as np
import torch

from utils import distributed
from utils.files import atomic_write

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = 'last.pth'
BEST_CHECKPOINT = 'best.pth'


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit; the message names the file."""


def unwrap_model(model):
    """The model inside a DDP (or ``torch.compile``) wrapper, or ``model`` itself."""
    model = getattr(model, 'module', model)
    return getattr(model, '_orig_mod', model)


def capture_rng_state():
    """Random-number states of Python, NumPy and torch (CPU and CUDA) as tensors and plain types."""
    numpy_state = np.random.get_state()
    state = {
        'python': random.getstate(),
        'numpy_keys': torch.from_numpy(numpy_state[1].astype(np.int64)),
        'numpy_position': [int(numpy_state[2]), int(numpy_state[3]), float(numpy_state[4])],
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    """Restore the states captured by :func:`capture_rng_state`."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    position, has_gauss, cached_gauss = state['numpy_position']
    keys = state['numpy_keys'].numpy().astype(np.uint32)
    np.random.set_state(('MT19937', keys, int(position), int(has_gauss), float(cached_gauss)))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def training_state(model, optimizer, scheduler, scaler, epoch, step, best, config):
    """Assemble a checkpoint dict. Call on every process (it gathers the RNG states of all ranks).

    Args:
        model: the (possibly DDP-wrapped) model.
        optimizer, scheduler, scaler: their ``state_dict`` is stored.
        epoch: the number of completed epochs (training continues at this epoch).
        step: the number of optimizer updates done so far.
        best: dict of the best metrics so far (plain types).
        config: the run's config; stored as YAML text.

    Returns:
        dict ready for :func:`save_checkpoint`.
    """
    return {
        'model': unwrap_model(model).state_dict(),
        'optimizer': optimizer.state_dict(),
        'lr_scheduler': scheduler.state_dict(),
        'scaler': scaler.state_dict(),
        'epoch': int(epoch),
        'step': int(step),
        'best': best,
        'config': config.dump(),
        'rng_states': distributed.all_gather_object(capture_rng_state()),
    }


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically, on rank 0 only.

    The file is written to a temporary name in the same folder and moved into place with
    ``os.replace``, so an interrupted write never leaves a half-written checkpoint behind.
    """
    if not distributed.is_main_process():
        return
    with atomic_write(path, 'wb') as f:
        torch.save(state, f)
    logger.info('saved %s (epoch %d, step %d)', path, state['epoch'], state['step'])


def load_checkpoint(path):
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, unreadable or not a DK-CLIP checkpoint; names the file.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # any unpickling failure means the same to the user: unusable file
        raise CheckpointError(f'cannot read checkpoint {path}: {error}') from error
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint:
        raise CheckpointError(f'{path} is not a DK-CLIP checkpoint (no "model" entry)')
    return checkpoint


def model_state_dict(checkpoint):
    """The checkpoint's model weights, without a ``module.`` prefix (checkpoints written from a DDP wrapper)."""
    return {key.removeprefix('module.'): value for key, value in checkpoint['model'].items()}


def load_model_weights(model, checkpoint, path):
    """Load the checkpoint's model weights strictly; a mismatch raises naming ``path``."""
    try:
        unwrap_model(model).load_state_dict(model_state_dict(checkpoint), strict=True)
    except RuntimeError as error:
        raise CheckpointError(f'{path}: the model weights do not fit this config: {error}') from error


def restore_training_state(checkpoint, path, model, optimizer, scheduler, scaler):
    """Continue a run from a checkpoint of :func:`training_state`.

    Args:
        checkpoint: the dict from :func:`load_checkpoint`.
        path: its file, named in errors.
        model, optimizer, scheduler, scaler: restored in place.

    Returns:
        (start_epoch, step, best) to continue the training loop with.

    Raises:
        CheckpointError: a missing entry or a state that does not fit; names the file.
    """
    missing = [key for key in ('optimizer', 'lr_scheduler', 'scaler', 'epoch', 'step') if key not in checkpoint]
    if missing:
        raise CheckpointError(f'{path} cannot resume training: missing {missing}')
    load_model_weights(model, checkpoint, path)
    try:
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['lr_scheduler'])
        scaler.load_state_dict(checkpoint['scaler'])
    except (ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(f'{path}: optimizer/scheduler state does not fit this run: {error}') from error
    _restore_rng_of_this_rank(checkpoint.get('rng_states'), path)
    logger.info('resumed from %s: epoch %d, step %d', path, checkpoint['epoch'], checkpoint['step'])
    return checkpoint['epoch'], checkpoint['step'], checkpoint.get('best') or {}


def _restore_rng_of_this_rank(rng_states, path):
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    if rng_states and len(rng_states) == world_size:
        restore_rng_state(rng_states[rank])
    else:
        logger.warning('%s holds random states for %s processes, this run has %d: random streams are '
                       'seeded afresh, so the continued run will not repeat an uninterrupted one exactly',
                       path, len(rng_states or []), world_size)
