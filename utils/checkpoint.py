"""Complete, atomic, ``weights_only``-safe training checkpoints, and the official release's files.

A checkpoint holds everything needed to continue a run as if it had not stopped: the model (without
DDP's ``module.`` prefix, so it loads into the official release's model and back), optimizer,
scheduler, gradient scaler, epoch, optimizer-update count, best metrics, the config as YAML text and
the random-number states of every process. Only plain types and tensors are stored, so that
``torch.load(..., weights_only=True)`` reads it.

The release's files (``{model, optimizer, lr_scheduler, max_accuracy, epoch, config}``, see
docs/model.md, section 'Checkpoints') are read with the same restricted loader: only their config
(a pickled yacs ``CfgNode``) and NumPy scalars are allowed besides tensors and plain types.
:func:`load_checkpoint` returns them in this project's layout with ``format`` = ``'release'``.
"""
import collections
import logging
import os
import random

import numpy as np
import torch
from yacs.config import CfgNode

from utils import distributed
from utils.errors import UserError
from utils.files import atomic_write

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = 'last.pth'
BEST_CHECKPOINT = 'best.pth'
# Entry holding torchrun's id of the job that wrote the checkpoint ('' outside torchrun).
TORCHRUN_RUN_KEY = 'torchrun_run_id'


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be read, written or does not fit; the message names the file."""


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
        'model': distributed.unwrap_model(model).state_dict(),
        'optimizer': optimizer.state_dict(),
        'lr_scheduler': scheduler.state_dict(),
        'scaler': scaler.state_dict(),
        'epoch': int(epoch),
        'step': int(step),
        'best': best,
        'config': config.dump(),
        'rng_states': distributed.all_gather_object(capture_rng_state()),
        # which torchrun job wrote it: a worker group that torchrun restarts resumes only its own file
        TORCHRUN_RUN_KEY: distributed.elastic_run_id(),
    }


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically, on rank 0 only.

    The file is written to a temporary name in the same folder and moved into place with
    ``os.replace``, so an interrupted write never leaves a half-written checkpoint behind.

    Raises:
        CheckpointError: the write failed (a full disk, no permission); names the file. The previous
            file at ``path``, if any, is left as it was and the temporary one is removed.
    """
    if not distributed.is_main_process():
        return
    try:
        with atomic_write(path, 'wb') as f:
            torch.save(state, f)
    except OSError as error:
        kept = f'; the previous {os.path.basename(path)} is kept' if os.path.isfile(path) else ''
        raise CheckpointError(f'cannot write checkpoint {path}: {error.strerror or error}{kept}') from error
    logger.info('saved %s (epoch %d, step %d)', path, state['epoch'], state['step'])


def torchrun_job_of(path):
    """torchrun's id of the job that wrote a checkpoint of this project ('' when none did), read with its
    tensors mapped rather than loaded.

    Raises:
        CheckpointError: the file cannot be read; names it.
    """
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except Exception as error:  # as in load_checkpoint: any unpickling failure means an unusable file
        raise CheckpointError(f'cannot read checkpoint {path}: {_unpickling_reason(error)}') from error
    return checkpoint.get(TORCHRUN_RUN_KEY, '') if isinstance(checkpoint, dict) else ''


RELEASE_FORMAT = 'release'


def _release_globals():
    # The release pickles its config as a yacs CfgNode. It is read as nested OrderedDicts (the names
    # are mapped, so no yacs code runs while unpickling) and turned into a CfgNode afterwards. NumPy
    # scalars may hold its best accuracy; numpy 1 pickled them under numpy.core.
    scalar = np._core.multiarray.scalar
    return [(collections.OrderedDict, 'yacs.config.CfgNode'), scalar,
            (scalar, 'numpy.core.multiarray.scalar'), np.dtype, *{type(np.dtype(kind)) for kind in 'fdiqb?'}]


def load_checkpoint(path):
    """Read a checkpoint of this project or of the official release, with ``weights_only=True``.

    Returns:
        dict in this project's layout; a release file gets ``format`` = ``'release'``, ``epoch`` =
        epochs completed (the release stores the 0-based epoch just finished) and its config as YAML.

    Raises:
        CheckpointError: the file is missing, unreadable or neither format; names the file.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    try:
        with torch.serialization.safe_globals(_release_globals()):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # any unpickling failure means the same to the user: unusable file
        raise CheckpointError(f'cannot read checkpoint {path}: {_unpickling_reason(error)}') from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get('model'), dict):
        raise CheckpointError(f'{path} is neither a checkpoint of this project nor one of the official '
                              f'release (no "model" state dict)')
    return _from_release(checkpoint) if is_release_checkpoint(checkpoint) else checkpoint


def is_release_checkpoint(checkpoint):
    """Whether a loaded file is the official release's: a best accuracy or a config node, no update count."""
    return 'step' not in checkpoint and ('max_accuracy' in checkpoint or isinstance(checkpoint.get('config'), dict))


def _unpickling_reason(error):
    # torch's message spans many lines of advice; what the safe unpickler refused is enough.
    text, marker = str(error), 'WeightsUnpickler error:'
    if marker not in text:
        return ' '.join(text.split()) or type(error).__name__
    detail = ' '.join(text.split(marker, 1)[1].split('Check the documentation')[0].split())
    return f'not a file torch.load reads safely ({detail.split(". Please")[0]})'


def _from_release(checkpoint):
    converted = dict(checkpoint, format=RELEASE_FORMAT)
    if 'epoch' in checkpoint:
        converted['epoch'] = int(checkpoint['epoch']) + 1
    config = checkpoint.get('config')
    converted['config'] = CfgNode(config).dump() if isinstance(config, dict) else None
    return converted


def model_state_dict(checkpoint):
    """The checkpoint's model weights, without a ``module.`` prefix (checkpoints written from a DDP wrapper)."""
    return {key.removeprefix('module.'): value for key, value in checkpoint['model'].items()}


def load_model_weights(model, checkpoint, path):
    """Load the checkpoint's model weights strictly; a mismatch raises naming ``path``."""
    try:
        distributed.unwrap_model(model).load_state_dict(model_state_dict(checkpoint), strict=True)
    except RuntimeError as error:
        raise CheckpointError(f'{path}: the model weights do not fit this config: {error}') from error


def restore_training_state(checkpoint, path, model, optimizer, scheduler, scaler, updates_per_epoch):
    """Continue a run from a checkpoint of :func:`training_state` or of the official release.

    Args:
        checkpoint: the dict from :func:`load_checkpoint`.
        path: its file, named in errors.
        model, optimizer, scheduler, scaler: restored in place.
        updates_per_epoch: optimizer updates per epoch of this run (places a release file's schedule).

    Returns:
        (start_epoch, step, best) to continue the training loop with.

    Raises:
        CheckpointError: a missing entry or a state that does not fit; names the file.
    """
    if checkpoint.get('format') == RELEASE_FORMAT:
        return _restore_from_release(checkpoint, path, model, optimizer, scheduler, updates_per_epoch)
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


def _restore_from_release(checkpoint, path, model, optimizer, scheduler, updates_per_epoch):
    # The release's file has the weights and the epoch; what it lacks or what does not fit this run
    # is named in the log, and training continues from the weights at the right point of the schedule.
    if 'epoch' not in checkpoint:
        raise CheckpointError(f'{path} cannot resume training: the release file has no "epoch"')
    load_model_weights(model, checkpoint, path)
    epoch = checkpoint['epoch']
    step = epoch * updates_per_epoch
    not_restored = []
    if not isinstance(checkpoint.get('optimizer'), dict):
        not_restored.append('the optimizer state (none in the file; AdamW moments start from zero)')
    else:
        try:
            optimizer.load_state_dict(checkpoint['optimizer'])
        except (KeyError, ValueError, RuntimeError) as error:
            not_restored.append(f'the optimizer state ({error}; AdamW moments start from zero)')
    scheduler.step_update(num_updates=step)  # this run's schedule, placed at the release's epoch
    not_restored += ['the gradient scaler (none in the file)',
                     'the random states (none in the file: later draws differ from the original run)',
                     f'the best epoch (the file holds max_accuracy {checkpoint.get("max_accuracy")}; '
                     f'best.pth is chosen afresh from epoch {epoch})']
    logger.warning('resumed from the official release file %s: weights and epoch %d (update %d) restored; '
                   'not restored: %s', path, epoch, step, '; '.join(not_restored))
    return epoch, step, {}
