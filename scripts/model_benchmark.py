"""Model sections of ``python -m scripts.benchmark``: training and evaluation steps, FLOPs, and the CPU
comparison with a straightforward implementation.

Subcommands (run from the repository root)::

    python -m scripts.benchmark train --preset tiny --precision fp32 bf16 --json train.json
    python -m scripts.benchmark eval --preset tiny
    # the GPU run (H100/H200: 989 dense bf16/fp16 TFLOP/s, 67 fp32), both steps, every setting:
    python -m scripts.benchmark model --preset vit-b16 --precision bf16 fp16 fp32 --compile off on \\
        --checkpoint off on --peak-tflops bf16=989 fp16=989 fp32=67 --json gpu.json
    python -m scripts.benchmark train --preset vit-b16 --precision bf16 --checkpoint on \\
        --opts TRAIN.BATCH_SIZE 32                                  # batch 32 with checkpointing
    python -m scripts.benchmark flops --preset vit-b16              # FLOPs per video, by part
    python -m scripts.benchmark reference --preset tiny             # ours vs the reference, CPU
    python -m scripts.benchmark reference --preset cpu-224 --steps 3 --warmup 1

The config is the project's defaults, then ``--preset`` (``tiny``: the tests' CLIP of width 64 at 32
px, T 8, batch 2; ``cpu-224``: ViT-B/16 widths at 224 px with 2 vision and 2 text layers, T 8, batch
1, sized for a 2-core CPU; ``host``: the published setting's layers, frames, snippets and batch at
width 64 and 32 px, whose step time on a CPU is mostly the host's share of a GPU step - Python,
dispatch, autograd - for comparing host overhead between code versions; ``vit-b16``: the published
setting, ViT-B/16, T 16, S 4, batch 8, 224 px), then ``--config`` and ``--opts``; CLIP's weights are
random, of the right shape (``MODEL.RANDOM_INIT``), unless ``MODEL.PRETRAINED`` names a file.
Parameters are frozen as the config says (``utils.optimizer``).

What is timed (after ``--warmup`` steps, which also absorb ``torch.compile``):
- ``train``: one optimisation step as ``utils.engine`` runs it - uint8 batch to the device, normalise,
  forward under autocast, loss (epoch 0: all terms), backward through the ``GradScaler``, AdamW update,
  LR-schedule step. fp16 scales the loss on every device; no mixup (``AUG.MIXUP`` is data-side).
- ``eval``: ``utils.engine.predict`` on one batch of ``TEST.BATCH_SIZE`` (or ``TRAIN.BATCH_SIZE``)
  videos x ``TEST.NUM_CLIP x TEST.NUM_CROP`` views, under ``no_grad``.
Each step is bracketed by ``torch.cuda.synchronize`` on CUDA; the median over ``--steps`` is reported.
On CUDA, 3 more steps run under ``torch.profiler`` and their summed kernel time gives the device busy
time per step (``busy ms``): the part of the wall time the GPU computes. Far below the wall time, the
step is host-bound (Python, dispatch and launches keep the GPU waiting), and the MFU the step could
reach on a faster host is MFU x wall / busy. ``host ms`` (CUDA) is the median time until the step
returns, before the closing synchronisation: the host's work, as the step never waits for the device
(``host_syncs`` 0); close to the wall time, the host is the limit. ``b2b ms`` (CUDA) is the median
time per step of ``--steps`` more steps queued back to back without synchronising, measured with CUDA
events, as the training loop runs them (it reads the device only every ``PRINT_FREQ`` steps): the host
queues the next step while the device finishes the last; ``b2b MFU`` is the MFU at that time.
``--profile ROWS`` prints the profiled steps' top operators.
A fresh model (same seed and weights) is built for each setting and measured alone; ``reference``
times its three steps in turns instead, so that a change in the load of a shared CPU hits all three.
``--threads 1`` gives stable timings on a busy CPU (see :func:`cpu_threads`).

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the timed steps (the peak counter is reset
after warm-up; weights, gradients and optimizer state included), and ``resv MiB``, the allocator's
reserved peak, which also holds the memory pools of CUDA graphs (``TRAIN.COMPILE_MODE reduce-overhead``:
their tensors are allocated when the graphs are recorded, during warm-up). On the CPU, the process's
resident set size: freed heap is returned to the system (glibc ``malloc_trim``), the kernel's RSS
high-water mark is reset (``/proc/self/clear_refs``), and ``VmHWM`` is read after the steps.
``peak_memory_mib`` is that absolute peak (on the CPU it includes the Python runtime and every model
alive in the process); ``step_memory_mib`` is the peak minus what was held just before the timed steps
(activations, gradients, temporaries). Where the high-water mark cannot be reset, the lifetime
``ru_maxrss`` is reported and ``memory_method`` says so.

FLOPs (``forward_flops``): 2 x the multiply-adds of every matrix product and convolution of one
video's forward pass; normalisations, softmax, activations and other element-wise work are not counted,
nor the head's few dot products (relevance and logits), which are element-wise products summed.
With W the vision width, E the embedding width, P patches per frame, N = P + 1 tokens, L vision
layers, T frames, S snippets, F = T / S, K classes, and ``attn(n, w) = 4 n w^2 + 2 n^2 w`` (q, k, v and
output projections, scores, weighted sum) for self-attention over n tokens::

    block(G) = W^2 (message_fc) + 4 W^2 + 2 G W (message attention, per row of a group of G rows)
               + attn(N + 1, W) (tokens + message token) + 8 N W^2 (MLP)
    visual          = T * (3 p^2 W P (patch conv) + L * block(F) + W E (ln_post @ proj))
    visual_semantic = S * (L * block(S) + P W E (prompts_visual_proj))
    msim            = MSIM_LAYERS * (attn(S, E) + 8 S E^2)
    prompts         = PROMPT_LAYERS * (K E^2 (q) + 2 P E^2 (k, v) + 2 K P E (scores, weighted sum)
                                       + K E^2 (proj) + 8 K E^2 (MLP))
    text            = K * (L_t * (attn(77, W_t) + 8 * 77 W_t^2) + W_t E) / B   (once per step, shared by
                      the B videos; without gradient under FIX_TEXT)

The causal text attention is counted in full (as the math kernel computes it). Training FLOPs are
3 x forward (backward = 2 x forward), the usual convention, although frozen parameters (the text tower
under FIX_TEXT) need no weight gradients. ``tests/test_benchmark.py`` checks the formula against
``torch.utils.flop_counter``.
Achieved FLOP/s = FLOPs per video x videos/s; MFU = achieved / ``--peak-tflops`` (pass the peak of the
precision measured, e.g. 989 for bf16/fp16 dense on H100/H200 SXM; ``bf16=989 fp32=67`` per precision).

JSON (``--json``): ``{"command", "environment": {torch, device, device_name, threads, load_average,
cpu_bf16, cpu_amx}, "model": {preset, arch, input_size, num_frames, num_snippets, batch_size,
eval_batch_size, num_classes, num_views, fix_text, dims, compile_mode}, "flops_per_video": {part: forward
FLOPs}, "results": [record, ...]}`` (``compile_mode``: ``TRAIN.COMPILE_MODE`` of the rows with ``compile``
true, '' for torch's default) with each record: ``section`` (train / eval), ``implementation`` (dkclip /
reference), ``precision``, ``compile``, ``checkpoint``, ``batch_size``, ``steps``, ``median_s``,
``videos_per_s``, ``peak_memory_mib``, ``step_memory_mib``, ``memory_method``, ``flops_per_video`` (train:
3 x forward; eval: forward x views), ``achieved_tflops``, ``mfu`` (null without a peak), ``host_syncs``
(CUDA: implicit synchronisations seen in one extra step under ``torch.cuda.set_sync_debug_mode``; null on
the CPU), ``device_busy_s`` (CUDA: kernel time per step; null on the CPU), ``host_s`` (CUDA: median host
time per step, see above), ``back_to_back_s`` and ``back_to_back_mfu`` (CUDA: the ``b2b`` figures),
``peak_reserved_mib`` (CUDA: ``resv MiB``) - these four null on the CPU - and ``seconds`` (every timed
step). ``model`` adds ``eval_to_train_speed``; ``reference`` adds ``comparison``: output differences, the
speed-ups with their targets, and the memory of each.
"""
import contextlib
import ctypes
import gc
import json
import os
import resource
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field, replace

import torch

from clip.model import clip_dims_from_state_dict
from models.builder import build_model, class_prompt_tokens, load_clip_state_dict
from models.loss import build_criterion
from utils.config import eval_batch_size as config_eval_batch_size
from utils.config import get_default_config, merge_config_file, merge_opts, validate_config
from utils.engine import Trainer, build_grad_scaler, forward_backward, normalize_videos, optimizer_update, predict
from utils.files import write_json
from utils.labels import read_label_csv
from utils.optimizer import build_optimizer, build_scheduler

from .reference_model import build_reference_model

_TINY = ['MODEL.ARCH', 'custom', 'MODEL.CUSTOM.EMBED_DIM', 64, 'MODEL.CUSTOM.IMAGE_RESOLUTION', 32,
         'MODEL.CUSTOM.VISION_LAYERS', 2, 'MODEL.CUSTOM.VISION_WIDTH', 64,
         'MODEL.CUSTOM.VISION_PATCH_SIZE', 8,
         'MODEL.CUSTOM.TEXT_LAYERS', 2, 'MODEL.CUSTOM.TEXT_WIDTH', 64, 'DATA.INPUT_SIZE', 32,
         'DATA.NUM_FRAMES', 8, 'TRAIN.BATCH_SIZE', 2]
_CPU_224 = ['MODEL.ARCH', 'custom', 'MODEL.CUSTOM.VISION_LAYERS', 2, 'MODEL.CUSTOM.TEXT_LAYERS', 2,
            'DATA.NUM_FRAMES', 8, 'TRAIN.BATCH_SIZE', 1]
# The published setting's operators (12 layers per encoder, T 16, S 4, batch 8) on tensors so small that
# the step's time is mostly the host's work: Python, dispatch, autograd (what a GPU would wait for).
_HOST = ['MODEL.ARCH', 'custom', 'MODEL.CUSTOM.EMBED_DIM', 64, 'MODEL.CUSTOM.IMAGE_RESOLUTION', 32,
         'MODEL.CUSTOM.VISION_WIDTH', 64, 'MODEL.CUSTOM.VISION_PATCH_SIZE', 16, 'DATA.INPUT_SIZE', 32,
         'MODEL.CUSTOM.TEXT_WIDTH', 64]
# --opts applied to the defaults (the published setting) by each preset; all use random CLIP weights.
PRESETS = {'tiny': _TINY, 'cpu-224': _CPU_224, 'host': _HOST, 'vit-b16': []}
PRECISIONS = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
TEXT_CONTEXT = 77
# What the issue asks of the CPU comparison: ours fp32 no slower than the reference's fp32 step, ours
# bf16 at least 2x faster than it (on CPUs with native bf16).
TARGET_FP32_SPEEDUP, TARGET_BF16_SPEEDUP = 1.0, 2.0
# Extra steps profiled after the timed ones (device busy time on CUDA, the --profile table).
PROFILED_STEPS = 3


# ----------------------------------------------------------------------------------------------------
# FLOP accounting (formula in the module docstring)
# ----------------------------------------------------------------------------------------------------
def _attention_macs(tokens, width):
    return 4 * tokens * width ** 2 + 2 * tokens ** 2 * width


def _cross_frame_block_macs(tokens, width, group_size):
    message = width ** 2 + 4 * width ** 2 + 2 * group_size * width
    return message + _attention_macs(tokens + 1, width) + 8 * tokens * width ** 2


def forward_flops(dims, config, num_classes, batch_size):
    """FLOPs of one video's forward pass, by part (see the module docstring for the formula).

    Args:
        dims: ``clip.CLIPDims`` of the model, ``image_resolution`` = the input size (``model.dims``).
        config: ``DATA.NUM_FRAMES``, ``DATA.NUM_DIVIDE``, ``MODEL.MSIM_LAYERS``, ``MODEL.PROMPT_LAYERS``.
        num_classes: K.
        batch_size: videos per step (the text encoder runs once per step, for all of them).

    Returns:
        dict: ``visual``, ``visual_semantic``, ``msim``, ``prompts``, ``text`` and ``total``.
    """
    width, embed, patches, layers = dims.vision_width, dims.embed_dim, dims.num_patches, dims.vision_layers
    frames, snippets, classes = config.DATA.NUM_FRAMES, config.DATA.NUM_DIVIDE, num_classes
    tokens, patch_size = patches + 1, dims.vision_patch_size
    macs = dict(
        visual=frames * (3 * patch_size ** 2 * width * patches + width * embed
                         + layers * _cross_frame_block_macs(tokens, width, frames // snippets)),
        visual_semantic=snippets * (layers * _cross_frame_block_macs(tokens, width, snippets)
                                    + patches * width * embed),
        msim=config.MODEL.MSIM_LAYERS * (_attention_macs(snippets, embed) + 8 * snippets * embed ** 2),
        prompts=config.MODEL.PROMPT_LAYERS * (10 * classes * embed ** 2 + 2 * patches * embed ** 2
                                              + 2 * classes * patches * embed),
        text=classes * _text_macs(dims) / batch_size,
    )
    flops = {part: 2 * value for part, value in macs.items()}
    flops['total'] = sum(flops.values())
    return flops


def input_dims(config, clip_state_dict):
    """``clip.CLIPDims`` of the model built from ``clip_state_dict`` at ``DATA.INPUT_SIZE``."""
    return replace(clip_dims_from_state_dict(clip_state_dict), image_resolution=config.DATA.INPUT_SIZE)


def _text_macs(dims):
    width = dims.transformer_width
    block = _attention_macs(TEXT_CONTEXT, width) + 8 * TEXT_CONTEXT * width ** 2
    return dims.transformer_layers * block + width * dims.embed_dim


# ----------------------------------------------------------------------------------------------------
# Memory and timing
# ----------------------------------------------------------------------------------------------------
def _status_mib(field_name):
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(field_name + ':'):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f'/proc/self/status has no {field_name}')


def _release_free_heap():
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL('libc.so.6').malloc_trim(0)


class PeakMemory:
    """Context manager measuring the peak memory of the steps it encloses (see the module docstring).

    Attributes (after exit): ``peak_mib``, ``step_mib`` (peak minus the memory held on entry),
    ``method``; on CUDA also ``peak_reserved_mib``, the most memory the caching allocator held (allocated
    or cached), which includes the private memory pools of CUDA graphs: their tensors are allocated
    once, when a graph is recorded, so the allocated peak of replayed steps leaves them out.
    """

    def __init__(self, device):
        self.device = device
        self.baseline_mib = self.peak_mib = self.step_mib = self.peak_reserved_mib = None
        self.method = None

    def __enter__(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mib = torch.cuda.memory_allocated(self.device) / 2 ** 20
            self.method = 'cuda_max_allocated'
            return self
        _release_free_heap()
        try:
            with open('/proc/self/clear_refs', 'w') as clear_refs:
                clear_refs.write('5')  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.baseline_mib, self.method = _status_mib('VmRSS'), 'rss_hwm_reset'
        except OSError:
            self.baseline_mib, self.method = self._lifetime_peak_mib(), 'ru_maxrss_lifetime'
        return self

    @staticmethod
    def _lifetime_peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

    def __exit__(self, *exc_info):
        if self.method == 'cuda_max_allocated':
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
            self.peak_reserved_mib = torch.cuda.max_memory_reserved(self.device) / 2 ** 20
        elif self.method == 'rss_hwm_reset':
            self.peak_mib = _status_mib('VmHWM')
        else:
            self.peak_mib = self._lifetime_peak_mib()
        self.step_mib = max(0.0, self.peak_mib - self.baseline_mib)
        return False


def _synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(step, device):
    """Seconds of one ``step()``: (wall time until the device is done, host time until ``step`` returns).

    A step without synchronisations returns once it has queued all its work; when the device is still
    busy for long after that, the host is not what limits the step.
    """
    _synchronize(device)
    started = time.perf_counter()
    step()
    returned = time.perf_counter()
    _synchronize(device)
    return time.perf_counter() - started, returned - started


def time_steps(step, device, warmup, steps):
    """Run ``step()`` ``warmup`` times, then time ``steps`` calls.

    Returns:
        (wall seconds per step, host seconds per step (see :func:`_timed`), :class:`PeakMemory`).
    """
    for _ in range(warmup):
        step()
    with PeakMemory(device) as memory:
        timings = [_timed(step, device) for _ in range(steps)]
    return [wall for wall, _ in timings], [host for _, host in timings], memory


def time_back_to_back(step, device, steps):
    """Seconds per step of ``steps`` calls queued back to back, as the training loop runs them (it reads
    the device only at logging intervals): CUDA events between the steps, one synchronisation at the end.
    While the device still computes one step, the host already queues the next, so the host's start of
    a step (input copy, first launches) overlaps the device's end of the previous one. None on the CPU,
    where the host runs the kernels itself and this equals the synchronised time.
    """
    if device.type != 'cuda':
        return None
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    _synchronize(device)
    events[0].record()
    for event in events[1:]:
        step()
        event.record()
    _synchronize(device)
    return [start.elapsed_time(end) / 1000 for start, end in zip(events, events[1:])]


def time_in_turns(steps, device, warmup, rounds):
    """Warm up each step function, then time them in turns, ``rounds`` times, so that a change in the
    machine's load affects all alike; afterwards one more call of each under :class:`PeakMemory`.

    Returns:
        (seconds per call, per function; memory, per function).
    """
    for step in steps:
        for _ in range(warmup):
            step()
    seconds = [[] for _ in steps]
    for _ in range(rounds):
        for times, step in zip(seconds, steps):
            times.append(_timed(step, device)[0])
    memories = []
    for step in steps:
        with PeakMemory(device) as memory:
            step()
        memories.append(memory)
    return seconds, memories


def count_host_syncs(step, device):
    """Implicit host-device synchronisations in one ``step()`` on CUDA (None elsewhere)."""
    if device.type != 'cuda':
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode('default')
    # Only the per-operation warnings count: the first switch of a process also warns that the debug
    # mode is a prototype, which is no synchronisation.
    return sum('called a synchronizing CUDA operation' in str(warning.message) for warning in caught)


# ----------------------------------------------------------------------------------------------------
# The steps
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One measured setting: implementation ('dkclip' or 'reference'), precision, compile, checkpointing."""
    precision: str
    compile: bool = False
    checkpoint: bool = False
    implementation: str = 'dkclip'


@dataclass
class Record:
    """One row of the results (the JSON fields are documented in the module docstring)."""
    section: str
    implementation: str
    precision: str
    compile: bool
    checkpoint: bool
    batch_size: int
    steps: int
    median_s: float
    videos_per_s: float
    peak_memory_mib: float
    step_memory_mib: float
    memory_method: str
    flops_per_video: float
    achieved_tflops: float
    mfu: float = None
    host_syncs: int = None
    device_busy_s: float = None
    host_s: float = None
    back_to_back_s: float = None
    back_to_back_mfu: float = None
    peak_reserved_mib: float = None
    seconds: list = field(default_factory=list)


@dataclass
class Bench:
    """What every measurement of one run shares: config, device, CLIP weights, prompts, batches."""
    config: object
    device: torch.device
    clip_state_dict: dict
    text_tokens: torch.Tensor
    class_names: list
    train_batch: dict
    eval_batch: dict
    num_views: int
    flops: dict


def random_batch(config, batch_size, num_views, num_classes, device):
    """uint8 videos (``[B, T, 3, H, W]``, or ``[B, V, T, 3, H, W]`` with views) and labels, as a loader
    yields them (pinned on CUDA, so the step's copy is the engine's non-blocking one)."""
    generator = torch.Generator().manual_seed(config.SEED)
    size, frames = config.DATA.INPUT_SIZE, config.DATA.NUM_FRAMES
    shape = (batch_size,) + ((num_views,) if num_views else ()) + (frames, 3, size, size)
    batch = dict(videos=torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator),
                 labels=torch.randint(0, num_classes, (batch_size,), generator=generator),
                 indices=torch.arange(batch_size))
    if device.type == 'cuda':
        batch = {name: tensor.pin_memory() for name, tensor in batch.items()}
    return batch


@contextlib.contextmanager
def cpu_threads(threads):
    """Run with ``threads`` torch CPU threads (0: unchanged), restored afterwards.

    OpenMP threads wait for each other at every parallel region: on a CPU shared with other jobs, one
    descheduled thread stalls the rest, which slows small element-wise kernels most. One thread gives
    stable timings there.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def prepare_bench(config, device):
    """Load (or draw) the CLIP weights once and make the prompts and the two batches."""
    text_tokens, class_names = class_prompt_tokens(config, device)
    num_classes, num_views = text_tokens.shape[0], config.TEST.NUM_CLIP * config.TEST.NUM_CROP
    eval_batch_size = config_eval_batch_size(config)
    clip_state_dict = load_clip_state_dict(config)
    flops = forward_flops(input_dims(config, clip_state_dict), config, num_classes, config.TRAIN.BATCH_SIZE)
    return Bench(config=config, device=device, clip_state_dict=clip_state_dict, text_tokens=text_tokens,
                 class_names=class_names, train_batch=random_batch(config, config.TRAIN.BATCH_SIZE, 0, num_classes, device),
                 eval_batch=random_batch(config, eval_batch_size, num_views, num_classes, device),
                 num_views=num_views, flops=flops)


def build_trainer(bench, variant):
    """A fresh model (same seed, so every variant has the same weights) with its optimizer and scaler,
    frozen as configured; the reference implementation when the variant asks for it."""
    config, device = bench.config, bench.device
    torch.manual_seed(config.SEED)
    model = build_model(config, bench.clip_state_dict).to(device)
    model.set_grad_checkpointing(variant.checkpoint)
    optimizer = build_optimizer(config, model)  # sets requires_grad as configured
    if variant.implementation == 'reference':
        model = build_reference_model(model)
        optimizer = build_optimizer(config, model)
    if variant.compile:
        # Each setting is measured alone: without the previous settings' compiled code, which counts
        # towards dynamo's recompile limit, and their CUDA graphs with the memory pools these hold.
        torch.compiler.reset()
        model.compile(mode=config.TRAIN.COMPILE_MODE or None)  # as models.builder.build_model_for_run
    amp_dtype = PRECISIONS[variant.precision]
    return Trainer(config=config, model=model, criterion=build_criterion(config), optimizer=optimizer,
                   scheduler=build_scheduler(config, optimizer, updates_per_epoch=10_000),
                   scaler=build_grad_scaler(device, amp_dtype), text_tokens=bench.text_tokens,
                   class_names=bench.class_names, device=device, amp_dtype=amp_dtype)


def make_step(bench, trainer, section):
    """The callable timed for ``section``: a training step, or evaluation of one batch."""
    if section == 'train':
        trainer.model.train()

        def train_step():
            forward_backward(trainer, bench.train_batch, 0, window_size=1, is_update=True)
            optimizer_update(trainer)
        return train_step
    trainer.model.eval()

    def eval_step():
        with torch.no_grad():
            predict(trainer.model, [bench.eval_batch], trainer.text_tokens, bench.config, bench.device,
                    trainer.amp_dtype)
    return eval_step


def measure(bench, section, variant, args):
    """Build, warm up, time and measure one variant; returns its :class:`Record`."""
    step = make_step(bench, build_trainer(bench, variant), section)
    seconds, host_seconds, memory = time_steps(step, bench.device, args.warmup, args.steps)
    back_to_back = time_back_to_back(step, bench.device, args.steps)
    device_busy_s = None
    rows = getattr(args, 'profile', 0)
    if rows or bench.device.type == 'cuda':
        profiler = profile_steps(step, bench.device, PROFILED_STEPS)
        device_busy_s = device_busy_seconds(profiler.key_averages(), PROFILED_STEPS)
        if rows:
            print_profile(profiler, bench.device, rows, f'{section} {variant}')
    host_s = statistics.median(host_seconds) if bench.device.type == 'cuda' else None
    return make_record(bench, section, variant, seconds, memory, args,
                       host_syncs=count_host_syncs(step, bench.device), device_busy_s=device_busy_s, host_s=host_s,
                       back_to_back_s=back_to_back and statistics.median(back_to_back))


def profile_steps(step, device, steps):
    """Run ``step()`` ``steps`` times under ``torch.profiler`` (CPU, and CUDA kernels on CUDA)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(steps):
            step()
        _synchronize(device)
    return profiler


def device_busy_seconds(events, steps):
    """Seconds per step that the GPU spends in kernels: the summed kernel durations of the profiled
    ``events`` (``profiler.key_averages()``) over ``steps`` steps, as torch's profiler table sums its
    "Self CUDA time total"; None when no kernel ran (the CPU).

    Well below the wall time, the step is host-bound (Python, dispatch and kernel launches leave the
    GPU idle); close to it, device-bound. Kernels overlapping on several streams would count twice, but
    a step here uses one stream.
    """
    device_types = (torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.PrivateUse1)
    microseconds = sum(event.self_device_time_total for event in events
                       if event.device_type in device_types and not event.is_user_annotation)
    return microseconds / 1e6 / steps if microseconds else None


def print_profile(profiler, device, rows, title):
    """Print the ``rows`` operators of ``profiler``'s steps that take the most device time (CPU time on
    the CPU)."""
    sort_by = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    print(f'profile of {PROFILED_STEPS} steps: {title}')
    print(profiler.key_averages().table(sort_by=sort_by, row_limit=rows, max_name_column_width=60))


def make_record(bench, section, variant, seconds, memory, args, host_syncs=None, device_busy_s=None,
                host_s=None, back_to_back_s=None):
    """The :class:`Record` of timed ``seconds`` and a :class:`PeakMemory` of ``variant``."""
    batch_size = len(bench.train_batch['labels'] if section == 'train' else bench.eval_batch['labels'])
    flops = bench.flops['total'] * (3 if section == 'train' else bench.num_views)
    median = statistics.median(seconds)
    achieved = flops * batch_size / median / 1e12
    peak = peak_tflops(args.peak_tflops, variant.precision)
    back_to_back_mfu = flops * batch_size / back_to_back_s / 1e12 / peak if peak and back_to_back_s else None
    return Record(section=section, implementation=variant.implementation, precision=variant.precision,
                  compile=variant.compile, checkpoint=variant.checkpoint, batch_size=batch_size,
                  steps=len(seconds), median_s=median, videos_per_s=batch_size / median,
                  peak_memory_mib=memory.peak_mib, step_memory_mib=memory.step_mib,
                  memory_method=memory.method, flops_per_video=flops, achieved_tflops=achieved,
                  mfu=achieved / peak if peak else None, host_syncs=host_syncs, device_busy_s=device_busy_s,
                  host_s=host_s, back_to_back_s=back_to_back_s, back_to_back_mfu=back_to_back_mfu,
                  peak_reserved_mib=memory.peak_reserved_mib, seconds=seconds)


# ----------------------------------------------------------------------------------------------------
# Sweeps, the CPU comparison, output
# ----------------------------------------------------------------------------------------------------
def load_benchmark_config(args):
    """Defaults <- ``--preset`` <- ``--config`` <- ``--opts``, with random CLIP weights; validated."""
    config = get_default_config()
    merge_opts(config, ['MODEL.RANDOM_INIT', True] + PRESETS[args.preset])
    if args.config:
        merge_config_file(config, args.config)
    merge_opts(config, args.opts)
    config.freeze()
    validate_config(config, check_files=False)
    return config


def peak_tflops(values, precision):
    """The peak TFLOP/s for ``precision`` from ``--peak-tflops`` (``989`` for every precision, or
    ``bf16=989 fp32=67``); None when not given."""
    for value in values or ():
        name, _, number = value.rpartition('=')
        if name in ('', precision):
            return float(number)
    return None


def sweep_variants(args, section, config):
    """Every combination of ``--precision``, ``--compile`` and (training only) ``--checkpoint``."""
    checkpoints = [config.TRAIN.USE_CHECKPOINT] if args.checkpoint is None else \
        [choice == 'on' for choice in args.checkpoint]
    if section == 'eval':
        checkpoints = [False]  # activation checkpointing only acts when gradients are recorded
    return [Variant(precision, compile_ == 'on', checkpoint) for precision in args.precision
            for compile_ in args.compile for checkpoint in checkpoints]


def environment(device):
    """Software, device and CPU load at the time of the run (stored in the JSON)."""
    info = dict(torch=torch.__version__, device=device.type, threads=torch.get_num_threads(),
                load_average=[round(load, 2) for load in os.getloadavg()],
                cpu_bf16=torch.cpu._is_avx512_bf16_supported(), cpu_amx=torch.cpu._is_amx_tile_supported())
    info['device_name'] = torch.cuda.get_device_name(device) if device.type == 'cuda' else _cpu_name()
    return info


def _cpu_name():
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    return 'cpu'


def model_summary(args, bench):
    """The measured model's shape (stored in the JSON)."""
    config = bench.config
    return dict(preset=args.preset, arch=config.MODEL.ARCH, input_size=config.DATA.INPUT_SIZE,
                num_frames=config.DATA.NUM_FRAMES, num_snippets=config.DATA.NUM_DIVIDE,
                batch_size=config.TRAIN.BATCH_SIZE, eval_batch_size=len(bench.eval_batch['labels']),
                num_classes=len(bench.text_tokens), num_views=bench.num_views, fix_text=config.MODEL.FIX_TEXT,
                dims=asdict(input_dims(config, bench.clip_state_dict)), compile_mode=config.TRAIN.COMPILE_MODE)


def _optional(value, scale, spec):
    """``value * scale`` formatted by ``spec`` (a trailing ``%`` is appended as text), '-' for None."""
    if value is None:
        return '-'
    suffix = '%' if spec.endswith('%') else ''
    return f'{value * scale:{spec.rstrip("%")}}{suffix}'


def format_table(records):
    """The records as a fixed-width text table."""
    lines = [f"{'section':<8}{'impl':<10}{'prec':<6}{'compile':<8}{'ckpt':<6}{'batch':>6}{'ms/step':>10}"
             f"{'b2b ms':>8}{'busy ms':>9}{'host ms':>9}{'videos/s':>10}{'peak MiB':>10}{'resv MiB':>10}"
             f"{'step MiB':>10}{'GFLOP/vid':>11}{'TFLOP/s':>9}{'MFU':>7}{'b2b MFU':>9}"]
    for r in records:
        lines.append(f'{r.section:<8}{r.implementation:<10}{r.precision:<6}{str(r.compile):<8}'
                     f'{str(r.checkpoint):<6}{r.batch_size:>6}{1000 * r.median_s:>10.1f}'
                     f'{_optional(r.back_to_back_s, 1000, ".1f"):>8}{_optional(r.device_busy_s, 1000, ".1f"):>9}'
                     f'{_optional(r.host_s, 1000, ".1f"):>9}{r.videos_per_s:>10.2f}{r.peak_memory_mib:>10.0f}'
                     f'{_optional(r.peak_reserved_mib, 1, ".0f"):>10}{r.step_memory_mib:>10.0f}'
                     f'{r.flops_per_video / 1e9:>11.2f}{r.achieved_tflops:>9.3f}{_optional(r.mfu, 100, ".1f%"):>7}'
                     f'{_optional(r.back_to_back_mfu, 100, ".1f%"):>9}')
    return '\n'.join(lines)


def report(args, bench, records, **extra):
    """Print the table (and ``extra``) and write the JSON when ``--json`` is given."""
    memory_method = records[0].memory_method if records else '-'
    mode = bench.config.TRAIN.COMPILE_MODE or 'default'
    compiled = f', compiled: mode {mode}' if any(r.compile for r in records) else ''
    print(f'{bench.config.MODEL.ARCH} ({args.preset}), {bench.device}, memory: {memory_method}, '
          f'load average {os.getloadavg()[0]:.2f}{compiled}')
    print(format_table(records))
    for name, value in extra.items():
        print(f'{name}: {json.dumps(value)}')
    if args.json:
        write_json(args.json, dict(command=args.command, environment=environment(bench.device),
                                   model=model_summary(args, bench), flops_per_video=bench.flops,
                                   results=[asdict(record) for record in records], **extra))
    return 0


def run_steps(args):
    """The ``train``, ``eval`` and ``model`` subcommands."""
    config = load_benchmark_config(args)
    device = torch.device(args.device)
    default_precisions = ['bf16', 'fp16', 'fp32'] if device.type == 'cuda' else ['fp32', 'bf16']
    args.precision = args.precision or default_precisions
    sections = ['train', 'eval'] if args.command == 'model' else [args.command]
    with cpu_threads(args.threads):
        bench = prepare_bench(config, device)
        records = [measure(bench, section, variant, args)
                   for section in sections for variant in sweep_variants(args, section, config)]
        extra = dict(eval_to_train_speed=eval_to_train_speed(records)) if args.command == 'model' else {}
        return report(args, bench, records, **extra)


def eval_to_train_speed(records):
    """Evaluation videos/s over training videos/s (without checkpointing), per precision and compile
    setting (the issue asks for at least 3 on the GPU)."""
    train = {(r.precision, r.compile): r.videos_per_s
             for r in records if r.section == 'train' and not r.checkpoint}
    return {f"{r.precision}{' compiled' if r.compile else ''}": r.videos_per_s / train[r.precision, r.compile]
            for r in records if r.section == 'eval' and (r.precision, r.compile) in train}


def output_differences(bench):
    """``max |ours - reference| / max |reference|`` of the three outputs on the training batch (fp32)."""
    config = bench.config
    torch.manual_seed(config.SEED)
    model = build_model(config, bench.clip_state_dict).to(bench.device)
    reference = build_reference_model(model)
    videos = normalize_videos(bench.train_batch['videos'].to(bench.device), config)
    with torch.no_grad():
        outputs = zip(('logits_global', 'logits_local', 'video_features'), model(videos, bench.text_tokens),
                      reference(videos, bench.text_tokens))
        return {name: ((ours - theirs).abs().max() / theirs.abs().max()).item()
                for name, ours, theirs in outputs if ours is not None}


def run_reference(args):
    """The ``reference`` subcommand: our training step (fp32, bf16 autocast) against the straightforward
    implementation's fp32 step, on the CPU, same process, same weights and frozen parameters.

    The three steps are timed in turns (:func:`time_in_turns`); all three models are alive, so the
    absolute ``peak_memory_mib`` holds all of them and ``step_memory_mib`` is the one to compare.
    """
    with cpu_threads(args.threads):
        bench = prepare_bench(load_benchmark_config(args), torch.device('cpu'))
        differences = output_differences(bench)
        variants = [Variant('fp32', implementation='reference'), Variant('fp32'), Variant('bf16')]
        steps = [make_step(bench, build_trainer(bench, variant), 'train') for variant in variants]
        seconds, memories = time_in_turns(steps, bench.device, args.warmup, args.steps)
        records = [make_record(bench, 'train', *measured, args)
                   for measured in zip(variants, seconds, memories)]
        return report_comparison(args, bench, records, differences)


def report_comparison(args, bench, records, differences):
    """Speed-ups against the reference's fp32 step and the memory of each, then :func:`report`."""
    reference, ours_fp32, ours_bf16 = records
    comparison = dict(
        output_relative_differences=differences,
        fp32_speedup=reference.median_s / ours_fp32.median_s, fp32_target=TARGET_FP32_SPEEDUP,
        bf16_speedup=reference.median_s / ours_bf16.median_s, bf16_target=TARGET_BF16_SPEEDUP,
        bf16_target_applies=torch.cpu._is_avx512_bf16_supported(),
        step_memory_mib=dict(reference_fp32=reference.step_memory_mib, fp32=ours_fp32.step_memory_mib,
                             bf16=ours_bf16.step_memory_mib),
        peak_memory_mib=dict(reference_fp32=reference.peak_memory_mib, fp32=ours_fp32.peak_memory_mib,
                             bf16=ours_bf16.peak_memory_mib))
    return report(args, bench, records, comparison=comparison)


def run_flops(args):
    """The ``flops`` subcommand: forward FLOPs per video by part, and the training step's 3x."""
    config = load_benchmark_config(args)
    num_classes = len(read_label_csv(config.DATA.LABEL_LIST))
    dims = input_dims(config, load_clip_state_dict(config))
    flops = forward_flops(dims, config, num_classes, config.TRAIN.BATCH_SIZE)
    print(f'{config.MODEL.ARCH} ({args.preset}): T {config.DATA.NUM_FRAMES}, S {config.DATA.NUM_DIVIDE}, '
          f'{config.DATA.INPUT_SIZE} px, K {num_classes}; GFLOPs per video')
    for part, value in flops.items():
        print(f'{part:<16}{value / 1e9:>12.3f}{100 * value / flops["total"]:>8.1f}%')
    print(f"{'train (3x)':<16}{3 * flops['total'] / 1e9:>12.3f}")
    if args.json:
        write_json(args.json, dict(command='flops', forward_flops_per_video=flops,
                                   train_flops_per_video=3 * flops['total'], dims=asdict(dims)))
    return 0


def _add_common_arguments(parser):
    parser.add_argument('--preset', choices=list(PRESETS), default='tiny',
                        help='model size: tiny (CPU tests), cpu-224 (224 px, 2 layers), host (published '
                             'layers and batch on tiny tensors: host overhead), vit-b16 (published)')
    parser.add_argument('--config', default='', help='YAML config merged after the preset')
    parser.add_argument('--opts', nargs='+', default=None, help="override settings: 'KEY VALUE' pairs")
    parser.add_argument('--json', default='', help='write the results to this JSON file')


def _add_timing_arguments(parser):
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps first (compilation, caches)')
    parser.add_argument('--steps', type=int, default=10, help='timed steps (the median is reported)')
    parser.add_argument('--peak-tflops', nargs='+', default=None,
                        help="peak TFLOP/s for the MFU: one number, or 'bf16=989 fp32=67'")
    parser.add_argument('--threads', type=int, default=0,
                        help='CPU threads of torch (0: its default); 1 gives stable timings on a busy CPU')


def add_model_commands(subparsers):
    """Register ``train``, ``eval``, ``model``, ``flops`` and ``reference``."""
    helps = dict(train='training step: forward, loss, backward, AdamW update',
                 eval='evaluation step: no_grad forward of one multi-view batch',
                 model='both the training and the evaluation step')
    for name, text in helps.items():
        parser = subparsers.add_parser(name, help=text)
        _add_common_arguments(parser)
        _add_timing_arguments(parser)
        parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
        parser.add_argument('--profile', type=int, default=0, metavar='ROWS',
                            help='also print the ROWS most expensive operators of each variant (torch.profiler)')
        parser.add_argument('--precision', nargs='+', choices=list(PRECISIONS), default=None,
                            help='autocast precisions (default: bf16 fp16 fp32 on CUDA, fp32 bf16 on CPU)')
        parser.add_argument('--compile', nargs='+', choices=['off', 'on'], default=['off'],
                            help='torch.compile of the model (nn.Module.compile with TRAIN.COMPILE_MODE)')
        parser.add_argument('--checkpoint', nargs='+', choices=['off', 'on'], default=None,
                            help='activation checkpointing (default: TRAIN.USE_CHECKPOINT)')
        parser.set_defaults(run=run_steps)
    parser = subparsers.add_parser('reference', help='CPU: ours vs a straightforward implementation')
    _add_common_arguments(parser)
    _add_timing_arguments(parser)
    parser.set_defaults(run=run_reference)
    parser = subparsers.add_parser('flops', help='forward FLOPs per video, by part')
    _add_common_arguments(parser)
    parser.set_defaults(run=run_flops)
