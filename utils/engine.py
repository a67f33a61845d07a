"""The engine: the training step, the epoch loop and evaluation.

Sections, in the order a run meets them: precision and input normalisation, one optimisation step
(:func:`forward_backward`, :func:`optimizer_update`), one epoch (:func:`train_one_epoch`), evaluation
of the three heads (:func:`evaluate`), and the epoch loop that trains, evaluates, keeps the best epoch
and writes checkpoints (:func:`fit`). ``main.py`` builds what the engine needs and calls :func:`fit`.

All of it runs unchanged on the CPU, one GPU or under DDP. Inside a training step nothing waits for
the device: losses are summed on the device and read only every ``PRINT_FREQ`` steps and at the end of
the epoch.
"""
import contextlib
import datetime
import functools
import logging
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

import torch

from utils import distributed
from utils.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, save_checkpoint, training_state
from utils.metrics import HEADS, evaluate_heads, head_scores
from utils.plots import plot_confusion_matrix
from utils.reporting import append_record, is_better, per_class_table, release_field, result_lines, \
    write_predictions
from utils.seeding import epoch_seed

logger = logging.getLogger(__name__)

CONFUSION_MATRIX_FILE = 'confusion_matrix.png'
# Per-video predictions of the best epoch's test evaluation (utils.reporting.write_predictions).
BEST_PREDICTIONS_FILE = 'best_test.predictions.csv'


# ----------------------------------------------------------------------------------------------------
# Precision and inputs
# ----------------------------------------------------------------------------------------------------
def resolve_amp_dtype(opt_level, device):
    """The autocast dtype for ``TRAIN.OPT_LEVEL`` on ``device``; None means fp32 (no autocast).

    ``O1`` is fp16 autocast with gradient scaling, which needs CUDA; on other devices it falls back to
    bf16 autocast with a warning.
    """
    if opt_level == 'O0':
        return None
    if opt_level == 'bf16' or device.type == 'cuda':
        return torch.bfloat16 if opt_level == 'bf16' else torch.float16
    logger.warning('TRAIN.OPT_LEVEL O1 (fp16 autocast) needs CUDA; running bf16 autocast on %s instead', device)
    return torch.bfloat16


def autocast(device, amp_dtype):
    """``torch.autocast`` for ``amp_dtype``, or a no-op context for fp32."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def mark_compiled_step(config):
    """Tell torch.compile's CUDA graphs (``TRAIN.COMPILE_MODE`` reduce-overhead) that a new step begins:
    they reuse their output memory, and the previous step's outputs are no longer needed."""
    if config.TRAIN.COMPILE and config.TRAIN.COMPILE_MODE == 'reduce-overhead':
        torch.compiler.cudagraph_mark_step_begin()


def build_grad_scaler(device, amp_dtype):
    """A ``GradScaler`` that is active only for fp16 (bf16 and fp32 need no loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def normalize_videos(videos, config):
    """uint8 videos ``[..., 3, H, W]`` -> float32 ``(x - DATA.MEAN) / DATA.STD`` on the same device.

    Args:
        videos: uint8 tensor whose third-last dimension holds the RGB channels.
        config: the run's config (``DATA.MEAN``, ``DATA.STD``, on the 0..255 scale).

    Returns:
        torch.Tensor: float32, same shape and device, contiguous.
    """
    # The loader's batches keep the decoders' channels-last memory: the layout changes here, on the
    # device, where it is cheaper than in a CPU worker (docs/performance.md, 'Data pipeline').
    videos = videos.contiguous()
    mean, std = _normalization_tensors(tuple(config.DATA.MEAN), tuple(config.DATA.STD), videos.device)
    return videos.float().sub_(mean).div_(std)


@functools.lru_cache(maxsize=8)
def _normalization_tensors(mean, std, device):
    # Cached per device: building them from Python lists each step would be a blocking host-to-device
    # copy inside the training step.
    def as_tensor(values):
        return torch.tensor(values, dtype=torch.float32, device=device).view(3, 1, 1)

    return as_tensor(mean), as_tensor(std)


# ----------------------------------------------------------------------------------------------------
# One optimisation step and one epoch
# ----------------------------------------------------------------------------------------------------
@dataclass
class Trainer:
    """What training needs, built once by ``main.build_trainer``.

    Attributes:
        config: the run's config.
        model: the model, DDP-wrapped under torchrun.
        criterion: ``criterion(targets, epoch, **outputs) -> (loss, parts)``, ``outputs`` the model's
            output dict (``models.loss``).
        optimizer, scheduler, scaler: AdamW, timm's per-update scheduler, the gradient scaler.
        text_tokens: ``[K, 77]`` class-prompt tokens on ``device``.
        device: where the model runs.
        class_names: short class names, in the order of the prompts (for the logged tables).
        amp_dtype: autocast dtype or None (fp32).
        blender: mixup / FMix batch blender or None.
        writer: TensorBoard ``SummaryWriter`` (rank 0) or None.
        num_updates: optimizer updates done so far (the schedule's position).
    """
    config: Any
    model: torch.nn.Module
    criterion: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    text_tokens: torch.Tensor
    device: torch.device
    class_names: tuple = ()
    amp_dtype: Any = None
    blender: Any = None
    writer: Any = None
    num_updates: int = 0


def accumulation_window(step, num_steps, accumulation_steps, update_trailing):
    """(micro-steps in the window of ``step``, whether ``step`` ends it and updates the weights).

    Windows hold ``accumulation_steps`` micro-steps; the last one of an epoch may be shorter. With
    ``update_trailing`` (``TRAIN.TRAILING_MICRO_BATCHES update``) that partial window updates, its loss
    averaged over its own length; otherwise it never updates and its gradient is discarded, as the
    release did.
    """
    window_start = step - step % accumulation_steps
    window_size = min(accumulation_steps, num_steps - window_start) if update_trailing else accumulation_steps
    return window_size, step == window_start + window_size - 1


def forward_backward(trainer, batch, epoch, window_size, is_update):
    """Forward one micro-batch and back-propagate its share of the loss.

    Returns:
        (loss, parts): the undivided loss and its detached parts (0-d tensors on the device).
    """
    mark_compiled_step(trainer.config)
    videos = batch['videos'].to(trainer.device, non_blocking=True)  # [B, T, 3, H, W] uint8
    targets = batch['labels'].to(trainer.device, non_blocking=True)
    videos = normalize_videos(videos, trainer.config)
    if trainer.blender is not None:
        videos, targets = trainer.blender(videos, targets)  # targets: [B, K] soft
    # DDP all-reduces gradients in backward; skip that on micro-steps that do not update.
    sync = contextlib.nullcontext() if is_update or not hasattr(trainer.model, 'no_sync') \
        else trainer.model.no_sync()
    with sync:
        with autocast(trainer.device, trainer.amp_dtype):
            outputs = trainer.model(videos, trainer.text_tokens, return_details=True)
        loss, parts = trainer.criterion(targets, epoch, **outputs)  # outside autocast: the loss in fp32
        trainer.scaler.scale(loss / window_size).backward()
    return loss.detach(), parts


def optimizer_update(trainer):
    """Clip (optionally), step the optimizer through the scaler, and advance the per-update schedule."""
    if trainer.config.TRAIN.CLIP_GRAD > 0:
        trainer.scaler.unscale_(trainer.optimizer)
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.config.TRAIN.CLIP_GRAD)
    trainer.scaler.step(trainer.optimizer)  # skipped by the scaler when fp16 gradients overflowed
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.num_updates += 1
    trainer.scheduler.step_update(num_updates=trainer.num_updates)


def peak_memory_mb(device):
    """Peak memory of this process in MiB: allocated tensors on CUDA, resident set size otherwise."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class LossMeter:
    """Sums of the loss and its parts on the device, plus the first step whose loss was not finite."""

    def __init__(self, device):
        self.sums = {}
        self.count = 0
        self.first_nonfinite_step = torch.tensor(-1, device=device)

    def update(self, step, loss, parts):
        """Add one micro-step (no synchronisation with the device)."""
        for name, value in {'loss': loss, **parts}.items():
            self.sums[name] = self.sums.get(name, 0) + value.float()
        self.count += 1
        unset = self.first_nonfinite_step < 0
        self.first_nonfinite_step = torch.where(unset & ~torch.isfinite(loss), step, self.first_nonfinite_step)

    def means(self):
        """Mean of each summed value so far, as floats (synchronises)."""
        return {name: (total / max(self.count, 1)).item() for name, total in self.sums.items()}

    def raise_if_nonfinite(self, epoch, num_steps):
        """Stop the run if any loss so far was NaN or infinite, naming the epoch and step (synchronises)."""
        step = int(self.first_nonfinite_step.item())
        if step >= 0:
            raise FloatingPointError(f'the loss became non-finite at epoch {epoch}, step {step + 1}/{num_steps}; '
                                     'lower TRAIN.LR, set TRAIN.CLIP_GRAD, or use TRAIN.OPT_LEVEL O0 to find the cause')


def log_progress(trainer, meter, epoch, step, num_steps, started):
    """One log line per ``PRINT_FREQ`` steps, and the TensorBoard scalars of that moment."""
    config, latest = trainer.config, meter.means()
    seconds_per_step = (time.time() - started) / (step + 1)
    eta = datetime.timedelta(seconds=int(seconds_per_step * (num_steps - step - 1)))
    learning_rate = trainer.optimizer.param_groups[0]['lr']
    parts = ' '.join(f'{name} {value:.4f}' for name, value in latest.items() if name != 'loss')
    logger.info('Train: [%d/%d][%d/%d] lr %.3e loss %.4f %s time/step %.3fs eta %s mem %.0fMB', epoch,
                config.TRAIN.EPOCHS, step + 1, num_steps, learning_rate, latest['loss'], parts,
                seconds_per_step, eta, peak_memory_mb(trainer.device))
    if trainer.writer is not None:
        for name, value in latest.items():
            trainer.writer.add_scalar(f'train/{name}', value, trainer.num_updates)
        trainer.writer.add_scalar('train/lr', learning_rate, trainer.num_updates)


def train_one_epoch(trainer, loader, epoch):
    """Train for one epoch with gradient accumulation, AMP and the per-update learning-rate schedule.

    Args:
        trainer: the :class:`Trainer`; its ``num_updates`` advances by the updates of this epoch.
        loader: the training loader (batches of ``videos`` uint8 ``[B, T, 3, H, W]``, ``labels``).
        epoch: the 0-based epoch (selects the objective's terms).

    Returns:
        dict of the epoch's mean loss and loss parts over all processes.

    Raises:
        FloatingPointError: a loss was NaN or infinite; names the epoch and step.
    """
    trainer.model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    num_steps, meter, started = len(loader), LossMeter(trainer.device), time.time()
    update_trailing = trainer.config.TRAIN.TRAILING_MICRO_BATCHES == 'update'
    for step, batch in enumerate(loader):
        window_size, is_update = accumulation_window(step, num_steps, trainer.config.TRAIN.ACCUMULATION_STEPS,
                                                     update_trailing)
        loss, parts = forward_backward(trainer, batch, epoch, window_size, is_update)
        if is_update:
            optimizer_update(trainer)
        meter.update(step, loss, parts)
        if (step + 1) % trainer.config.PRINT_FREQ == 0 or step + 1 == num_steps:
            meter.raise_if_nonfinite(epoch, num_steps)
            log_progress(trainer, meter, epoch, step, num_steps, started)
    trainer.optimizer.zero_grad(set_to_none=True)  # a dropped trailing window's gradient
    means = {name: distributed.all_reduce_mean(total / max(meter.count, 1)).item()
             for name, total in meter.sums.items()}
    logger.info('epoch %d trained in %s: %s', epoch, datetime.timedelta(seconds=int(time.time() - started)),
                ' '.join(f'{name} {value:.4f}' for name, value in means.items()))
    return means


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------
def shuffle_frames(videos, generator):
    """Randomly permute the frames of each clip (a test of whether the model uses their order).

    Args:
        videos: ``[N, T, ...]``.
        generator: a seeded CPU ``torch.Generator``.
    """
    num_clips, num_frames = videos.shape[:2]
    order = torch.rand(num_clips, num_frames, generator=generator).argsort(dim=1)  # [N, T]
    return videos[torch.arange(num_clips)[:, None], order]


@dataclass
class Evaluation:
    """Results of :func:`evaluate`: per-head reports and the gathered per-video scores.

    Attributes:
        heads: head -> :func:`utils.metrics.classification_report` dict.
        scores: head -> ``[N, K]`` scores of every video of the list (all processes), on the CPU.
        labels: ``[N]`` true classes.
        indices: ``[N]`` positions in the list, sorted.
    """
    heads: dict
    scores: dict
    labels: torch.Tensor
    indices: torch.Tensor


def predict(model, loader, text_tokens, config, device, amp_dtype, frame_generator=None):
    """Per-video head scores, labels and list indices of this process's share of ``loader``."""
    # every name from the start: a process without any video (more processes than videos) still gathers
    heads = HEADS if config.MODEL.USE_LOCAL else HEADS[:1]
    collected = {name: [] for name in ('labels', 'indices', *heads)}
    for batch in loader:
        videos = batch['videos']  # [B, V, T, 3, H, W] uint8
        num_views = videos.shape[1]
        videos = videos.flatten(0, 1)  # [B * V, T, 3, H, W]
        if frame_generator is not None:
            videos = shuffle_frames(videos, frame_generator)
        videos = normalize_videos(videos.to(device, non_blocking=True), config)
        mark_compiled_step(config)
        with autocast(device, amp_dtype):
            logits_global, logits_local, _ = model(videos, text_tokens)
        for head, scores in head_scores(logits_global, logits_local, num_views).items():
            collected[head].append(scores)
        # non_blocking: a plain copy from (pinned) host memory would wait for the device here
        collected['labels'].append(batch['labels'].to(device, non_blocking=True))
        collected['indices'].append(batch['indices'].to(device, non_blocking=True))
    return _concatenate(collected, config, device)


def _concatenate(collected, config, device):
    def empty(name):  # a process without any video
        shape = (0,) if name in ('labels', 'indices') else (0, config.DATA.NUM_CLASSES)
        return torch.zeros(shape, dtype=torch.long if len(shape) == 1 else torch.float32, device=device)

    return {name: torch.cat(parts) if parts else empty(name) for name, parts in collected.items()}


@torch.no_grad()
def evaluate(model, loader, text_tokens, config, device, amp_dtype, shuffled=False):
    """Multi-view evaluation of the global, local and fused heads over all processes.

    Args:
        model: the model (a DDP wrapper is looked through).
        loader: a test loader whose batches hold ``videos`` uint8 ``[B, V, T, 3, H, W]``, ``labels`` and
            ``indices``; each process holds its own share of the list.
        text_tokens: ``[K, 77]`` on ``device``.
        config: the run's config.
        device: where the model runs.
        amp_dtype: autocast dtype or None (fp32): the trainer's, or :func:`resolve_amp_dtype`'s.
        shuffled: permute the frames of every clip (seeded by ``SEED``) before the model sees them.

    Returns:
        :class:`Evaluation` with each test video counted exactly once.
    """
    model = distributed.unwrap_model(model)
    model.eval()
    generator = torch.Generator().manual_seed(config.SEED) if shuffled else None
    collected = predict(model, loader, text_tokens, config, device, amp_dtype, generator)
    indices = collected.pop('indices')
    gathered, indices = distributed.gather_predictions(collected, indices)
    gathered = {name: value.cpu() for name, value in gathered.items()}
    labels = gathered.pop('labels')
    indices = indices.cpu()
    heads = evaluate_heads(gathered, labels, config.DATA.NUM_CLASSES, indices, config.TEST.RELEASE_UAR_SHARDS)
    return Evaluation(heads=heads, scores=gathered, labels=labels, indices=indices)


def log_evaluation(heads, class_names, title, prefix='RESULT', suffix=''):
    """Log the per-class table of ``heads`` under ``title``, then their grep-able RESULT lines."""
    logger.info('%s:\n%s', title, per_class_table(heads, class_names))
    for line in result_lines(heads, prefix=prefix, suffix=suffix):
        logger.info(line)


def evaluate_and_log(model, loader, text_tokens, class_names, config, device):
    """Evaluate a trained model on ``loader`` (frames shuffled with ``TEST.SHUFFLE_FRAMES``) and log its
    per-class table and RESULT lines: ``main.py --only_test`` and ``scripts/eval.py``."""
    shuffled = config.TEST.SHUFFLE_FRAMES
    amp_dtype = resolve_amp_dtype(config.TRAIN.OPT_LEVEL, device)
    evaluation = evaluate(model, loader, text_tokens, config, device, amp_dtype, shuffled=shuffled)
    views = f'{config.TEST.NUM_CLIP} clip(s) x {config.TEST.NUM_CROP} crop(s)'
    log_evaluation(evaluation.heads, class_names,
                   f'{len(evaluation.labels)} videos, {views}{", frames shuffled" if shuffled else ""}')
    return evaluation


# ----------------------------------------------------------------------------------------------------
# The epoch loop
# ----------------------------------------------------------------------------------------------------
def start_loader_epoch(loader, epoch, seed):
    """Make the epoch's shuffling and augmentation a function of (seed, epoch), so that a resumed run
    repeats them: the sampler orders the samples by (SEED, epoch), the loader's generator seeds the
    epoch's new workers."""
    if hasattr(loader.sampler, 'set_epoch'):
        loader.sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(epoch_seed(seed, epoch))


def evaluate_splits(trainer, test_loader, val_loader=None, shuffled=False):
    """Evaluate the test list and, if given, the validation split: ``{split: Evaluation}``."""
    splits = {'test': test_loader, 'val': val_loader}
    return {split: evaluate(trainer.model, loader, trainer.text_tokens, trainer.config, trainer.device,
                            trainer.amp_dtype, shuffled=shuffled)
            for split, loader in splits.items() if loader is not None}


def record_training(trainer, epoch, losses):
    """Append the epoch's mean losses to metrics.jsonl and TensorBoard (rank 0)."""
    if distributed.is_main_process():
        append_record(trainer.config.OUTPUT, {'type': 'train', 'epoch': epoch, 'losses': losses})
    if trainer.writer is not None:
        for name, value in losses.items():
            trainer.writer.add_scalar(f'epoch/{name}', value, epoch)


def record_evaluation(config, writer, epoch, split, evaluation, class_names):
    """Log one evaluation, append it to metrics.jsonl and write its TensorBoard scalars (rank 0)."""
    summary = ' | '.join(f'{head} UAR {report["UAR"]:.2f} WAR {report["WAR"]:.2f}'
                         f'{release_field(report, " ")}' for head, report in evaluation.heads.items())
    logger.info('Epoch %d %s (%d videos): %s', epoch, split, len(evaluation.labels), summary)
    if not distributed.is_main_process():
        return
    append_record(config.OUTPUT, {'type': 'eval', 'epoch': epoch, 'split': split,
                                  'num_videos': len(evaluation.labels), 'class_names': class_names,
                                  'heads': evaluation.heads})
    if writer is not None:
        for head, report in evaluation.heads.items():
            for metric in ('UAR', 'WAR', 'UAR_release'):
                if metric in report:
                    writer.add_scalar(f'{split}/{head}/{metric}', report[metric], epoch)


def update_results(results, epoch, evaluations, config):
    """Record the epoch as the last one and, if it beats the best so far, as the best. Returns True then.

    The best epoch is chosen on the validation split when there is one, else on the test list (as
    published); the figures reported for it are always the test list's.
    """
    split = 'val' if 'val' in evaluations else 'test'
    metric = config.TEST.BEST_METRIC
    selection = evaluations[split].heads['global']
    record = {'epoch': epoch, 'heads': evaluations['test'].heads,
              'selection': {'split': split, 'metric': metric, 'value': selection[metric]}}
    results['last'] = record
    best = results.get('best')
    if is_better(selection, best and {metric: best['selection']['value']}, metric):
        results['best'] = record
        return True
    return False


def save_best_test_outputs(trainer, epoch, results, test_evaluation, test_entries):
    """The best epoch's confusion matrix picture and per-video predictions (rank 0), rewritten whenever
    the best epoch changes."""
    if not distributed.is_main_process():
        return
    output = trainer.config.OUTPUT
    plot_confusion_matrix(results['best']['heads']['global']['confusion_matrix'], trainer.class_names,
                          os.path.join(output, CONFUSION_MATRIX_FILE), f'global head, best epoch {epoch}')
    write_predictions(os.path.join(output, BEST_PREDICTIONS_FILE), test_evaluation, test_entries,
                      trainer.class_names)


def save_epoch(trainer, epoch, results, improved, test_evaluation, test_entries):
    """Write best.pth and the best epoch's test outputs when the epoch improved, then last.pth every
    ``SAVE_FREQ`` epochs and after the final one.

    The best epoch's files go first: a run killed before last.pth resumes from the previous last.pth
    and repeats this epoch, whereas the other order would leave a last.pth whose best epoch is not the
    one in best.pth.
    """
    config = trainer.config
    completed = epoch + 1
    save_last = completed % config.SAVE_FREQ == 0 or completed == config.TRAIN.EPOCHS
    if not (save_last or improved):
        return
    state = training_state(trainer.model, trainer.optimizer, trainer.scheduler, trainer.scaler, completed,
                           trainer.num_updates, results, config)
    if improved:
        save_checkpoint(state, os.path.join(config.OUTPUT, BEST_CHECKPOINT))
        save_best_test_outputs(trainer, epoch, results, test_evaluation, test_entries)
    if save_last:
        save_checkpoint(state, os.path.join(config.OUTPUT, LAST_CHECKPOINT))


def fit(trainer, loaders, start_epoch, results):
    """The epoch loop from ``start_epoch``: train, evaluate, keep the best epoch, save.

    Args:
        trainer: the :class:`Trainer`.
        loaders: ``datasets.DataLoaders`` (``train``, ``test`` and optionally ``val``).
        start_epoch: the first epoch to train (the completed epochs of a resumed run).
        results: ``{'best': record or None, 'last': record or None}``, updated in place.

    Returns:
        ``results`` after the last epoch.
    """
    config = trainer.config
    for epoch in range(start_epoch, config.TRAIN.EPOCHS):
        start_loader_epoch(loaders.train, epoch, config.SEED + distributed.get_rank())
        losses = train_one_epoch(trainer, loaders.train, epoch)
        record_training(trainer, epoch, losses)
        evaluations = evaluate_splits(trainer, loaders.test, loaders.val)
        for split, evaluation in evaluations.items():
            record_evaluation(config, trainer.writer, epoch, split, evaluation, trainer.class_names)
        improved = update_results(results, epoch, evaluations, config)
        best = results['best']
        logger.info('best so far: epoch %d (%s %s of the global head %.2f)', best['epoch'],
                    best['selection']['split'], best['selection']['metric'], best['selection']['value'])
        save_epoch(trainer, epoch, results, improved, evaluations['test'], loaders.test.dataset.entries)
    return results
