"""Training and evaluation loops: one epoch of optimisation, and multi-view evaluation of the three heads.

Both loops run unchanged on the CPU, one GPU or under DDP. Inside a training step nothing waits for the
device: losses are summed on the device and read (one synchronisation) only every ``PRINT_FREQ`` steps
and at the end of the epoch.
"""
import contextlib
import datetime
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

import torch

import clip
import models
from datasets import normalize_videos
from utils import distributed
from utils.checkpoint import model_state_dict, unwrap_model
from utils.labels import read_label_csv
from utils.metrics import HEADS, evaluate_heads, head_scores
from utils.reporting import class_names_from_prompts, per_class_table, result_lines

logger = logging.getLogger(__name__)


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


@dataclass
class Trainer:
    """What one optimisation step needs.

    Attributes:
        config: the run's config.
        model: the model, DDP-wrapped under torchrun.
        criterion: ``criterion(logits_global, logits_local, targets, epoch) -> (loss, parts)``.
        optimizer, scheduler, scaler: AdamW, timm's per-update scheduler, the gradient scaler.
        text_tokens: ``[K, 77]`` class-prompt tokens on ``device``.
        device: where the model runs.
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
    amp_dtype: Any = None
    blender: Any = None
    writer: Any = None
    num_updates: int = 0


def accumulation_window(step, num_steps, accumulation_steps):
    """(micro-steps in the window of ``step``, whether ``step`` ends it and updates the weights).

    Windows hold ``accumulation_steps`` micro-steps; the last one of an epoch may be shorter (a
    trailing partial accumulation still updates, with its loss averaged over its own length).
    """
    window_start = step - step % accumulation_steps
    window_size = min(accumulation_steps, num_steps - window_start)
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
            logits_global, logits_local, _ = trainer.model(videos, trainer.text_tokens)
        logits_local = None if logits_local is None else logits_local.float()
        loss, parts = trainer.criterion(logits_global.float(), logits_local, targets, epoch)
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
    for step, batch in enumerate(loader):
        window_size, is_update = accumulation_window(step, num_steps, trainer.config.TRAIN.ACCUMULATION_STEPS)
        loss, parts = forward_backward(trainer, batch, epoch, window_size, is_update)
        if is_update:
            optimizer_update(trainer)
        meter.update(step, loss, parts)
        if (step + 1) % trainer.config.PRINT_FREQ == 0 or step + 1 == num_steps:
            meter.raise_if_nonfinite(epoch, num_steps)
            log_progress(trainer, meter, epoch, step, num_steps, started)
    means = {name: distributed.all_reduce_mean(total / max(meter.count, 1)).item()
             for name, total in meter.sums.items()}
    logger.info('epoch %d trained in %s: %s', epoch, datetime.timedelta(seconds=int(time.time() - started)),
                ' '.join(f'{name} {value:.4f}' for name, value in means.items()))
    return means


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
    collected = {name: [] for name in ('labels', 'indices')}
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
            collected.setdefault(head, []).append(scores)
        # non_blocking: a plain copy from (pinned) host memory would wait for the device here
        collected['labels'].append(batch['labels'].to(device, non_blocking=True))
        collected['indices'].append(batch['indices'].to(device, non_blocking=True))
    return _concatenate(collected, config, device)


def _concatenate(collected, config, device):
    # A process may hold no video at all (more processes than videos): it still joins the gather.
    heads = HEADS if config.MODEL.USE_LOCAL else HEADS[:1]
    empty = {'labels': torch.zeros(0, dtype=torch.long, device=device)}
    empty.update({head: torch.zeros(0, config.DATA.NUM_CLASSES, device=device) for head in heads})
    empty['indices'] = empty['labels']
    return {name: torch.cat(parts) if parts else empty[name] for name, parts in collected.items()}


@torch.no_grad()
def evaluate(model, loader, text_tokens, config, device, amp_dtype=None, shuffled=False):
    """Multi-view evaluation of the global, local and fused heads over all processes.

    Args:
        model: the model (a DDP wrapper is looked through).
        loader: a test loader whose batches hold ``videos`` uint8 ``[B, V, T, 3, H, W]``, ``labels`` and
            ``indices``; each process holds its own share of the list.
        text_tokens: ``[K, 77]`` on ``device``.
        config: the run's config.
        device: where the model runs.
        amp_dtype: autocast dtype or None.
        shuffled: permute the frames of every clip (seeded by ``SEED``) before the model sees them.

    Returns:
        :class:`Evaluation` with each test video counted exactly once.
    """
    model = unwrap_model(model)
    model.eval()
    generator = torch.Generator().manual_seed(config.SEED) if shuffled else None
    collected = predict(model, loader, text_tokens, config, device, amp_dtype, generator)
    indices = collected.pop('indices')
    gathered, indices = distributed.gather_predictions(collected, indices)
    gathered = {name: value.cpu() for name, value in gathered.items()}
    labels = gathered.pop('labels')
    heads = evaluate_heads(gathered, labels, config.DATA.NUM_CLASSES)
    return Evaluation(heads=heads, scores=gathered, labels=labels, indices=indices.cpu())


def build_model_for_run(config, device, checkpoint=None):
    """Build DK-CLIP on ``device`` from the CLIP weights the config names, or from a checkpoint.

    Args:
        config: the run's config (``MODEL.PRETRAINED`` / ``MODEL.ARCH`` / ``MODEL.RANDOM_INIT``;
            ``TRAIN.COMPILE`` compiles the encoders).
        device: where the model goes.
        checkpoint: a dict from :func:`utils.checkpoint.load_checkpoint`, or None. A DK-CLIP checkpoint
            holds the backbone, so no CLIP weights file is needed; the caller still loads the
            checkpoint strictly afterwards (:func:`utils.checkpoint.load_model_weights`).
    """
    if checkpoint is None:
        clip_state_dict = models.load_clip_state_dict(config)
    else:
        clip_state_dict = model_state_dict(checkpoint)
    model = models.build_model(config, clip_state_dict)
    model = model.to(device)
    if config.TRAIN.COMPILE:
        # in place: names stay unchanged
        models.compile_encoders(model, **compile_options(config))
    return model


def compile_options(config):
    """Keyword arguments of :func:`models.compile_encoders` from the config: ``TRAIN.COMPILE_SCOPE``,
    ``TRAIN.COMPILE_MEMORY_BUDGET`` and, when set, ``TRAIN.COMPILE_MODE`` (torch.compile's ``mode``)."""
    options = dict(scope=config.TRAIN.COMPILE_SCOPE, memory_budget=config.TRAIN.COMPILE_MEMORY_BUDGET)
    if config.TRAIN.COMPILE_MODE:
        options['mode'] = config.TRAIN.COMPILE_MODE
    return options


def class_prompt_tokens(config, device):
    """Tokenised class prompts ``[K, 77]`` of ``DATA.LABEL_LIST`` on ``device``, and short class names."""
    prompts = read_label_csv(config.DATA.LABEL_LIST)
    return clip.tokenize(prompts).to(device), class_names_from_prompts(prompts)


def evaluate_and_report(model, loader, config, device):
    """Evaluate ``model`` on ``loader`` (frames shuffled with ``TEST.SHUFFLE_FRAMES``), log the per-class
    table and the RESULT lines; used by ``--only_test`` and ``scripts/eval.py``.

    Returns:
        (:class:`Evaluation`, class names).
    """
    text_tokens, class_names = class_prompt_tokens(config, device)
    shuffled = config.TEST.SHUFFLE_FRAMES
    evaluation = evaluate(model, loader, text_tokens, config, device,
                          resolve_amp_dtype(config.TRAIN.OPT_LEVEL, device), shuffled=shuffled)
    views = f'{config.TEST.NUM_CLIP} clip(s) x {config.TEST.NUM_CROP} crop(s)'
    logger.info('%d videos, %s%s:\n%s', len(evaluation.labels), views, ', frames shuffled' if shuffled else '',
                per_class_table(evaluation.heads, class_names))
    for line in result_lines(evaluation.heads):
        logger.info(line)
    return evaluation, class_names
