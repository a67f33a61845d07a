"""Speed benchmarks: ``python -m scripts.benchmark {train,eval,model,reference,loader,faces} --help``.

The model's steps are built as ``main.py`` builds them (``main.build_trainer``) and timed as the engine
runs them; what each figure means, the commands and the results are in docs/performance.md.
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter

import cv2
import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from datasets.annotations import AnnotationEntry
from datasets.faces import FaceSettings, build_face_detector
from datasets.faces.detectors import DETECTORS, build_detector
from datasets.faces.moving_photo import (ASTRONAUT_FACE, CAMERA_FACE, GRACE_HOPPER_FACE, drifting_face_boxes,
                                         grace_hopper, moving_photo_frames, photo_test_frames)
from datasets.synthetic import draw_clips, sample_clip_parameters, write_frame_folder, write_mp4
from datasets.transforms import TrainTransform
from datasets.video_dataset import VideoDataset
from main import build_trainer
from models.builder import build_model_for_run, class_prompt_tokens
from utils.config import eval_batch_size, get_default_config, merge_config_file, merge_opts, validate_config
from utils.distributed import DistributedContext
from utils.engine import forward_backward, normalize_videos, optimizer_update, predict
from utils.errors import run_command
from utils.files import write_json

from .prepare_faces import process_video
from .reference_model import build_reference_model

# --opts of each preset over the defaults (the published setting); random CLIP weights unless
# MODEL.PRETRAINED names a file.
PRESETS = {
    'tiny': ['MODEL.ARCH', 'custom', 'MODEL.CUSTOM.EMBED_DIM', 64, 'MODEL.CUSTOM.IMAGE_RESOLUTION', 32,
             'MODEL.CUSTOM.VISION_LAYERS', 2, 'MODEL.CUSTOM.VISION_WIDTH', 64, 'MODEL.CUSTOM.VISION_PATCH_SIZE',
             8, 'MODEL.CUSTOM.TEXT_LAYERS', 2, 'MODEL.CUSTOM.TEXT_WIDTH', 64, 'DATA.INPUT_SIZE', 32,
             'DATA.NUM_FRAMES', 8, 'TRAIN.BATCH_SIZE', 2],
    'cpu-224': ['MODEL.ARCH', 'custom', 'MODEL.CUSTOM.VISION_LAYERS', 2, 'MODEL.CUSTOM.TEXT_LAYERS', 2,
                'DATA.NUM_FRAMES', 8, 'TRAIN.BATCH_SIZE', 1],
    'vit-b16': [],
}
PRECISION_LEVELS = {'fp32': 'O0', 'bf16': 'bf16', 'fp16': 'O1'}  # -> TRAIN.OPT_LEVEL
UPDATES_PER_EPOCH = 10_000  # a schedule so long that the timed steps stay in its warm-up
# scikit-image's photographs without a face, for the detector's false boxes.
FACELESS_PHOTOS = ('coffee', 'chelsea', 'rocket', 'hubble_deep_field', 'immunohistochemistry')


# ----------------------------------------------------------------------------------------------------
# train, eval, model, reference
# ----------------------------------------------------------------------------------------------------
def benchmark_config(args, precision, compile_=False, checkpoint=None):
    """Defaults <- preset <- ``--config`` <- ``--opts`` <- the variant (precision, compile, checkpointing)."""
    config = get_default_config()
    merge_opts(config, ['MODEL.RANDOM_INIT', True] + PRESETS[args.preset])
    if args.config:
        merge_config_file(config, args.config)
    merge_opts(config, args.opts)
    variant = ['TRAIN.OPT_LEVEL', PRECISION_LEVELS[precision], 'TRAIN.COMPILE', compile_]
    merge_opts(config, variant + ([] if checkpoint is None else ['TRAIN.USE_CHECKPOINT', checkpoint]))
    config.freeze()
    return validate_config(config, check_files=False)


def build_variant(config, device, reference=False):
    """``main.build_trainer`` for one process around weights drawn from ``SEED`` (the same for every
    variant); with ``reference``, around the straightforward implementation."""
    torch.compiler.reset()  # each compiled variant alone: no earlier graphs or CUDA-graph pools
    torch.manual_seed(config.SEED)
    model = build_model_for_run(config, device)
    model = build_reference_model(model) if reference else model
    return build_trainer(config, DistributedContext(0, 1, 0, device), model, UPDATES_PER_EPOCH,
                         *class_prompt_tokens(config, device))


def random_batch(config, views, device):
    """A loader's batch of random uint8 videos (``[B, V, T, 3, S, S]`` with views), pinned on CUDA."""
    generator, size = torch.Generator().manual_seed(config.SEED), config.DATA.INPUT_SIZE
    batch_size = eval_batch_size(config) if views else config.TRAIN.BATCH_SIZE
    shape = (batch_size,) + ((views,) if views else ()) + (config.DATA.NUM_FRAMES, 3, size, size)
    batch = dict(videos=torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator),
                 labels=torch.randint(0, config.DATA.NUM_CLASSES, (batch_size,), generator=generator),
                 indices=torch.arange(batch_size))
    return {name: value.pin_memory() for name, value in batch.items()} if device.type == 'cuda' else batch


def make_step(trainer, section, batch):
    """The timed callable: one training step as the engine runs it, or the evaluation of ``batch``."""
    trainer.model.train(section == 'train')
    if section == 'train':
        def train_step():
            forward_backward(trainer, batch, 0, window_size=1, is_update=True)
            optimizer_update(trainer)
        return train_step
    return torch.no_grad()(lambda: predict(trainer.model, [batch], trainer.text_tokens, trainer.config,
                                           trainer.device, trainer.amp_dtype))


def forward_flops_per_video(config, device):
    """One video's forward FLOPs, counted on a training batch (matrix products and convolutions; attention
    through the math kernel, which the counter sees; the text tower shared by the batch's videos)."""
    trainer, batch = build_variant(config, device), random_batch(config, 0, device)
    videos = normalize_videos(batch['videos'].to(device), config)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        trainer.model(videos, trainer.text_tokens)
    return counter.get_total_flops() / len(videos)


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_steps(step, device, steps):
    """Seconds of each of ``steps`` calls, each waited for on the device."""
    seconds = []
    for _ in range(steps):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def time_back_to_back(step, device, steps):
    """Median seconds per step of ``steps`` calls queued without waiting, timed by CUDA events (None on
    the CPU, where the host runs the kernels and this equals the waited time)."""
    if device.type != 'cuda':
        return None
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    synchronize(device)
    events[0].record()
    for event in events[1:]:
        step()
        event.record()
    synchronize(device)
    return statistics.median(start.elapsed_time(end) / 1000 for start, end in zip(events, events[1:]))


def mfu(step_flops, seconds, peaks, precision):
    """Achieved FLOP/s over the ``--peak-tflops`` of ``precision`` (``989`` or ``bf16=989 fp32=67``)."""
    for value in peaks or ():
        name, _, number = value.rpartition('=')
        if seconds and name in ('', precision):
            return step_flops / seconds / (float(number) * 1e12)
    return None


def measure(args, section, precision, compile_, checkpoint, flops):
    """Build, warm up (compilation included) and time one variant; its row of the results."""
    config = benchmark_config(args, precision, compile_, checkpoint)
    trainer = build_variant(config, torch.device(args.device))
    device, views = trainer.device, config.TEST.NUM_CLIP * config.TEST.NUM_CROP
    batch = random_batch(config, views if section == 'eval' else 0, device)
    step = make_step(trainer, section, batch)
    for _ in range(args.warmup):
        step()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_steps(step, device, args.steps)
    median, back_to_back = statistics.median(seconds), time_back_to_back(step, device, args.steps)
    if args.profile:
        print_profile(step, device, args.profile)
    videos = len(batch['labels'])
    step_flops = (3 * flops if section == 'train' else views * flops) * videos  # backward = 2 x forward
    cuda = device.type == 'cuda'
    return dict(section=section, precision=precision, compile=compile_, checkpoint=config.TRAIN.USE_CHECKPOINT,
                batch_size=videos, median_s=median, back_to_back_s=back_to_back, videos_per_s=videos / median,
                peak_allocated_gib=torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else None,
                peak_reserved_gib=torch.cuda.max_memory_reserved(device) / 2 ** 30 if cuda else None,
                step_flops=step_flops, mfu=mfu(step_flops, median, args.peak_tflops, precision),
                back_to_back_mfu=mfu(step_flops, back_to_back, args.peak_tflops, precision), seconds=seconds)


def print_profile(step, device, rows):
    """The ``rows`` most expensive operators of 3 steps (by device time on CUDA)."""
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(3):
            step()
        synchronize(device)
    sort_by = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    print(profiler.key_averages().table(sort_by=sort_by, row_limit=rows))


def format_rows(rows):
    """The rows as a text table (``-`` where a figure does not exist on this device)."""
    def cell(value, spec, width, scale=1):
        return ('-' if value is None else f'{value * scale:{spec}}').rjust(width)

    lines = ['section prec  compile  ckpt   batch  ms/step  b2b ms  videos/s alloc GiB resv GiB    MFU b2b MFU']
    for r in rows:
        lines.append(f"{r['section']:<8}{r['precision']:<6}{str(r['compile']):<9}{str(r['checkpoint']):<6}"
                     f"{r['batch_size']:>6}{cell(r['median_s'], '.1f', 9, 1000)}"
                     f"{cell(r['back_to_back_s'], '.1f', 8, 1000)}{r['videos_per_s']:>10.2f}"
                     f"{cell(r['peak_allocated_gib'], '.2f', 10)}{cell(r['peak_reserved_gib'], '.2f', 9)}"
                     f"{cell(r['mfu'], '.1%', 7)}{cell(r['back_to_back_mfu'], '.1%', 8)}")
    return '\n'.join(lines)


def cpu_name():
    """The processor's model name from ``/proc/cpuinfo`` (``platform``'s elsewhere)."""
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as cpuinfo:
            return next(line.split(':', 1)[1].strip() for line in cpuinfo if line.startswith('model name'))
    return platform.processor() or 'cpu'


def environment(device):
    """What the figures were measured on (printed and stored in the JSON)."""
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name()
    return dict(device=name, torch=torch.__version__, threads=torch.get_num_threads(),
                load_average=round(os.getloadavg()[0], 2), native_bf16=torch.cpu._is_avx512_bf16_supported())


def report(args, payload, text):
    """Print ``text`` and write ``payload`` (with the command) to ``--json``."""
    print(text)
    if args.json:
        write_json(args.json, dict(command=args.command, preset=args.preset, **payload))
    return 0


def run_steps(args):
    """``train``, ``eval``, ``model``: every combination of precision, compilation and (training)
    activation checkpointing."""
    sections = ['train', 'eval'] if args.command == 'model' else [args.command]
    args.precision = args.precision or (['bf16', 'fp16', 'fp32'] if 'cuda' in args.device else ['fp32', 'bf16'])
    checkpoints = [None] if args.checkpoint is None else [choice == 'on' for choice in args.checkpoint]
    with cpu_threads(args.threads):
        flops = forward_flops_per_video(benchmark_config(args, 'fp32'), torch.device(args.device))
        rows = [measure(args, section, precision, compile_ == 'on', checkpoint if section == 'train' else None,
                        flops)
                for section in sections for precision in args.precision for compile_ in args.compile or ['off']
                for checkpoint in (checkpoints if section == 'train' else [None])]
        env = environment(torch.device(args.device))
    heading = (f"{args.preset} on {env['device']}, torch {env['torch']}, {env['threads']} threads, "
               f"{flops / 1e9:.1f} GFLOPs per video forward, load {env['load_average']}")
    return report(args, dict(environment=env, forward_flops_per_video=flops, results=rows),
                  heading + '\n' + format_rows(rows))


def output_differences(ours, reference):
    """``max |ours - reference| / max |reference|`` of the three outputs on a training batch (fp32)."""
    videos = normalize_videos(random_batch(ours.config, 0, ours.device)['videos'], ours.config)
    with torch.no_grad():
        pairs = zip(('logits_global', 'logits_local', 'video_features'), ours.model(videos, ours.text_tokens),
                    reference.model(videos, reference.text_tokens))
        return {name: ((mine - theirs).abs().max() / theirs.abs().max()).item()
                for name, mine, theirs in pairs if mine is not None}


def run_reference(args):
    """``reference`` (CPU): our training step in fp32 and bf16 autocast against the straightforward
    implementation's fp32 step, on the same weights, timed in turns so that a change in the machine's
    load hits all three alike."""
    cpu, names = torch.device('cpu'), ('reference_fp32', 'fp32', 'bf16')
    with cpu_threads(args.threads):
        trainers = [build_variant(benchmark_config(args, precision), cpu, reference=name == 'reference_fp32')
                    for name, precision in zip(names, ('fp32', 'fp32', 'bf16'))]
        differences = output_differences(trainers[1], trainers[0])
        steps = [make_step(trainer, 'train', random_batch(trainer.config, 0, cpu)) for trainer in trainers]
        for step in steps * args.warmup:
            step()
        seconds = {name: [] for name in names}
        for _ in range(args.steps):
            for name, step in zip(names, steps):
                seconds[name] += time_steps(step, cpu, 1)
        env = environment(cpu)
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    comparison = dict(output_relative_differences=differences, seconds=seconds,
                      fp32_speedup=medians['reference_fp32'] / medians['fp32'],
                      bf16_speedup=medians['reference_fp32'] / medians['bf16'])
    text = (f"{args.preset} on {env['device']}, {env['threads']} threads, native bf16 {env['native_bf16']}: "
            f"s/step reference fp32 {medians['reference_fp32']:.3f}, ours fp32 {medians['fp32']:.3f}, "
            f"bf16 {medians['bf16']:.3f}\ncomparison: {json.dumps(comparison)}")
    return report(args, dict(environment=env, comparison=comparison), text)


@contextlib.contextmanager
def cpu_threads(threads):
    """Run with ``threads`` torch CPU threads (0: unchanged): one gives stable timings on a busy CPU,
    where a descheduled OpenMP thread stalls the others at every parallel region."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def add_model_commands(subparsers):
    """Register ``train``, ``eval``, ``model`` and ``reference``."""
    for name, text in (('train', 'training step'), ('eval', 'evaluation step'), ('model', 'both steps'),
                       ('reference', 'CPU: our training step against a straightforward implementation')):
        parser = subparsers.add_parser(name, help=text)
        for option, default, kind, text in (
                ('--preset', 'tiny', str, f'{", ".join(PRESETS)}: CPU tests, 224 px with 2 layers, published'),
                ('--config', '', str, 'YAML config merged after the preset'),
                ('--json', '', str, 'write the results to this JSON file'),
                ('--warmup', 3, int, 'untimed steps first (compilation, caches)'),
                ('--steps', 10, int, 'timed steps (the median is reported)'),
                ('--threads', 0, int, 'torch CPU threads (0: its default)'),
                ('--profile', 0, int, 'print the ROWS most expensive operators of each variant'),
                ('--device', 'cuda' if torch.cuda.is_available() else 'cpu', str, 'where the steps run')):
            parser.add_argument(option, default=default, type=kind, help=text)
        parser.add_argument('--opts', nargs='+', default=None, help="override settings: 'KEY VALUE' pairs")
        for option, choices, text in (
                ('--precision', list(PRECISION_LEVELS), 'default: bf16 fp16 fp32 on CUDA, fp32 bf16 on the CPU'),
                ('--compile', ['off', 'on'], 'TRAIN.COMPILE (torch.compile in TRAIN.COMPILE_MODE); default off'),
                ('--checkpoint', ['off', 'on'], "TRAIN.USE_CHECKPOINT; default the config's")):
            parser.add_argument(option, nargs='+', choices=choices, default=None, help=text)
        parser.add_argument('--peak-tflops', nargs='+', default=None,
                            help="the device's dense peak for the MFU: one number, or 'bf16=989 fp32=67'")
        parser.set_defaults(run=run_reference if name == 'reference' else run_steps)


# ----------------------------------------------------------------------------------------------------
# loader: data loading and augmentation, per worker
# ----------------------------------------------------------------------------------------------------
def write_benchmark_clips(folder, num_clips, num_source_frames, size, jpeg_quality=90):
    """Face-like clips (the synthetic generator's) as JPEG folders and mp4 files: (folders, videos)."""
    synthetic = get_default_config().DATA.SYNTHETIC
    synthetic.defrost()
    synthetic.CLIP_LENGTH, synthetic.FRAME_SIZE, synthetic.NOISE_FRAMES = num_source_frames, size, 0
    rng, folders, videos = np.random.default_rng(0), [], []
    for index in range(num_clips):  # one clip at a time: a 224 px clip is ~40 MB as floats
        params = sample_clip_parameters(rng, np.array([index % 7]), synthetic)
        frames = draw_clips(params, num_source_frames, size, synthetic.PIXEL_NOISE, 0, rng)[0]
        folders.append(os.path.join(folder, f'frames_{index:03d}'))
        write_frame_folder(folders[-1], frames, quality=jpeg_quality)
        videos.append(os.path.join(folder, f'video_{index:03d}.mp4'))
        write_mp4(videos[-1], frames)
    return folders, videos


def rates_on_one_thread(work, count):
    """(per second of wall time, per second of this process's CPU time: the rate on an idle core) of
    ``count`` items that ``work()`` processes, with one torch and OpenCV thread (= one data worker)."""
    with cpu_threads(1):
        cv2.setNumThreads(1)
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def run_loader_benchmark(args):
    """``loader``: the training pipeline (sampling, decoding, augmentation) in clips/s per worker, for
    JPEG folders and mp4 files read from the page cache."""
    config = get_default_config()
    transform = TrainTransform(args.input_size, config.AUG.COLOR_JITTER, config.AUG.GRAY_SCALE,
                               config.AUG.PER_FRAME_JITTER)
    with tempfile.TemporaryDirectory() as folder:
        folders, videos = write_benchmark_clips(folder, args.clips, args.source_frames, args.size)
        print(f'{args.clips} clips of {args.source_frames} frames at {args.size} x {args.size}; training '
              f'pipeline, {args.frames} frames -> {args.input_size} x {args.input_size}')
        for name, paths in (('JPEG folders', folders), ('mp4 (decord)', videos)):
            entries = [AnnotationEntry(path, None, 0, 'benchmark', line) for line, path in enumerate(paths)]
            dataset = VideoDataset(entries, args.frames, transform, train=True, num_clips=1, skip_bad=False)
            dataset[0]  # warm-up: page cache, lazy initialisation
            rate, cpu_rate = rates_on_one_thread(
                lambda: [dataset[i % len(dataset)] for i in range(args.iterations)], args.iterations)
            print(f'{name:>13}: {rate:7.1f} clips/s per worker ({cpu_rate:.1f} per CPU-second)')
    return 0


def add_loader_command(subparsers):
    """Register ``loader``."""
    parser = subparsers.add_parser('loader', help='data loading: clips/s per worker (JPEG and mp4)')
    for option, default, text in (('--clips', 8, 'distinct clips written'), ('--size', 224, 'their side'),
                                  ('--source-frames', 64, 'frames per written clip'),
                                  ('--frames', 16, 'frames sampled per clip (T)'),
                                  ('--input-size', 224, 'network input side'),
                                  ('--iterations', 200, 'clips timed per format')):
        parser.add_argument(option, type=int, default=default, help=text)
    parser.set_defaults(run=run_loader_benchmark)


# ----------------------------------------------------------------------------------------------------
# faces: the face front end of scripts/prepare_faces.py
# ----------------------------------------------------------------------------------------------------
def run_faces_benchmark(args):
    """``faces``: frames/s of prepare_faces' whole per-video work (decoding, detection, tracking, crops
    written) on one thread, for a real photograph drifting and growing across the frames."""
    size = (args.width, args.height)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'face.mp4')
        boxes = drifting_face_boxes(args.frames, size, (0.3, 0.4), (0.7, 0.6), (90, 140))
        write_mp4(path, moving_photo_frames(grace_hopper(), GRACE_HOPPER_FACE, boxes, size))
        entry = AnnotationEntry(path, None, None, 'benchmark', 1)
        print(f'{args.frames} frames at {args.width} x {args.height}, one face, {FaceSettings.size} px crops')
        for detect_every in args.detect_every:
            settings, results = FaceSettings(detect_every=detect_every), []
            build_face_detector(settings)  # built once per process: not timed
            rates = [rates_on_one_thread(lambda: results.append(process_video(
                entry, os.path.join(folder, 'crops'), settings, show_progress=False)), args.frames)
                for _ in range(args.repeats)]
            print(f'detect every {detect_every}: {np.median([r[0] for r in rates]):6.1f} frames/s '
                  f'({np.median([r[1] for r in rates]):.1f} per CPU-second; median of {args.repeats}), '
                  f'{results[-1].num_written}/{results[-1].num_frames} frames with a face')
    return 0


def run_photo_benchmark(args):
    """``faces --photos``: the detector's rate of found faces on real photographs placed at several sizes
    and in several conditions, and its boxes on photographs without a face."""
    from skimage import data  # scikit-image's photographs ship in its wheel

    photos = {'grace_hopper': (grace_hopper(), GRACE_HOPPER_FACE), 'astronaut': (data.astronaut(), ASTRONAUT_FACE),
              'camera': (np.stack([data.camera()] * 3, axis=-1), CAMERA_FACE)}
    faceless = [np.ascontiguousarray(getattr(data, name)()[..., :3]) for name in FACELESS_PHOTOS]
    frames = photo_test_frames(photos)
    for detect_size in args.detect_size:
        detector = build_detector(args.detector, detect_size, args.detector_model)
        found, total, started = Counter(), Counter(), time.process_time()
        for _, side, _, frame, box in frames:  # found: a box's centre inside the true face box
            total[side] += 1
            found[side] += bool((np.abs(detector(frame)[:, :2] - box[:2]) <= box[2] / 2).all(axis=1).any())
        rate = len(frames) / (time.process_time() - started)
        false_boxes = sum(len(detector(cv2.resize(photo, (640, 360)))) for photo in faceless)
        by_side = ' '.join(f'{side}:{found[side]}/{total[side]}' for side in sorted(total))
        print(f'{args.detector} at {detect_size} px: {sum(found.values())}/{len(frames)} faces found (by face '
              f'side {by_side}), {false_boxes} boxes on faceless photographs, {rate:.1f} frames per CPU-second')
    return 0


def add_faces_command(subparsers):
    """Register ``faces``."""
    parser = subparsers.add_parser('faces', help='face front end: frames/s of prepare_faces on one thread')
    parser.add_argument('--photos', action='store_true', help='instead: detection rate on real photographs')
    parser.add_argument('--detector', default=FaceSettings.detector, choices=DETECTORS, help='with --photos')
    parser.add_argument('--detector-model', default='', help='with --photos: the YuNet ONNX file')
    parser.add_argument('--detect-size', type=int, nargs='+', default=[FaceSettings.detect_size],
                        help="with --photos: longer side of the detector's frames (one row each)")
    parser.add_argument('--frames', type=int, default=300, help='frames of the test video')
    parser.add_argument('--width', type=int, default=640, help='frame width')
    parser.add_argument('--height', type=int, default=360, help='frame height')
    parser.add_argument('--detect-every', type=int, nargs='+', default=[1, FaceSettings.detect_every],
                        help='detector on every k-th frame (one row each)')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs per row')
    parser.set_defaults(run=lambda args: (run_photo_benchmark if args.photos else run_faces_benchmark)(args))


def main(argv=None):
    """Run the benchmark named by the first argument; returns the exit status."""
    parser = argparse.ArgumentParser(prog='python -m scripts.benchmark', description=__doc__.split('\n')[0])
    subparsers = parser.add_subparsers(dest='command', required=True)
    add_model_commands(subparsers)
    add_loader_command(subparsers)
    add_faces_command(subparsers)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(run_command(main))
