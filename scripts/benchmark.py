"""Speed benchmarks. Each section is a subcommand; speed targets live here, never in timed tests.

Usage, from the repository root::

    python -m scripts.benchmark loader                 # data loading, clips/s per worker
    python -m scripts.benchmark loader --workers 2     # also through a DataLoader with 2 workers
    python -m scripts.benchmark train --preset tiny    # model training step (see model_benchmark.py)
    python -m scripts.benchmark model --preset vit-b16 --peak-tflops 989 --json gpu.json  # GPU
    python -m scripts.benchmark reference              # CPU: ours vs a straightforward implementation

``loader`` writes face-like clips (the synthetic generator at DFEW's 224 x 224, JPEG quality 90)
as frame folders and as mp4 files into a temporary folder, then times the training pipeline
(sampling, decoding the 16 sampled frames, augmentation) in one process with one thread, which is
what one data-loader worker does. The files are read from the page cache: this measures decoding and
augmentation, not the disk. Target: 100 clips/s per worker for JPEG folders at 16 x 224.
"""
import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from datasets.annotations import AnnotationEntry
from datasets.build import seed_worker
from datasets.synthetic import draw_clips, sample_clip_parameters, write_frame_folder, write_mp4
from datasets.transforms import TrainTransform
from datasets.video_dataset import VideoDataset, collate_clips
from utils.config import get_default_config
from utils.errors import run_command

from .model_benchmark import add_model_commands

# JPEG quality of the benchmark frames (DFEW's face clips are ordinary ~90 quality JPEGs).
BENCHMARK_JPEG_QUALITY = 90


# ----------------------------------------------------------------------------------------------------
# loader: data loading and augmentation
# ----------------------------------------------------------------------------------------------------
def write_benchmark_clips(folder, num_clips, num_source_frames, size):
    """Write ``num_clips`` face clips as JPEG folders and mp4 files; returns (folders, videos)."""
    synthetic = get_default_config().DATA.SYNTHETIC
    synthetic.defrost()
    synthetic.CLIP_LENGTH, synthetic.FRAME_SIZE, synthetic.NOISE_FRAMES = num_source_frames, size, 0
    rng = np.random.default_rng(0)
    folders, videos = [], []
    for index in range(num_clips):  # one clip at a time: a 224 px clip is ~40 MB as floats
        params = sample_clip_parameters(rng, np.array([index % 7]), synthetic)
        frames = draw_clips(params, num_source_frames, size, synthetic.PIXEL_NOISE, 0, rng)[0]
        folders.append(os.path.join(folder, f'frames_{index:03d}'))
        write_frame_folder(folders[-1], frames, quality=BENCHMARK_JPEG_QUALITY)
        videos.append(os.path.join(folder, f'video_{index:03d}.mp4'))
        write_mp4(videos[-1], frames)
    return folders, videos


def _training_dataset(paths, num_frames, input_size):
    entries = [AnnotationEntry(path, None, 0, 'benchmark', index) for index, path in enumerate(paths)]
    config = get_default_config()
    transform = TrainTransform(input_size, config.AUG.COLOR_JITTER, config.AUG.GRAY_SCALE,
                               config.AUG.PER_FRAME_JITTER)
    return VideoDataset(entries, num_frames, transform, train=True, num_clips=1, skip_bad=False)


def clips_per_second_in_process(dataset, iterations):
    """Time ``iterations`` training items in this process with one thread (= one worker).

    Returns:
        tuple: clips per second of wall time, and per second of this process's CPU time (the rate
        on an idle core, when other jobs share the machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        for index in range(min(len(dataset), 4)):  # warm-up: page cache, lazy initialisation
            dataset[index]
        wall, cpu = time.perf_counter(), time.process_time()
        for index in range(iterations):
            dataset[index % len(dataset)]
        return iterations / (time.perf_counter() - wall), iterations / (time.process_time() - cpu)
    finally:
        torch.set_num_threads(threads)


def clips_per_second_with_loader(dataset, workers, iterations, batch_size=8):
    """Time a ``DataLoader`` with ``workers`` workers over ``iterations`` clips (after one batch)."""
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=iterations + batch_size)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_clips, worker_init_fn=seed_worker)
    batches = iter(loader)
    next(batches)  # worker start-up is not loading speed
    started, count = time.perf_counter(), 0
    for batch in batches:
        count += len(batch['labels'])
    return count / (time.perf_counter() - started)


def run_loader_benchmark(args):
    """The ``loader`` subcommand: print clips/s per worker for JPEG folders and mp4 files."""
    with tempfile.TemporaryDirectory() as folder:
        folders, videos = write_benchmark_clips(folder, args.clips, args.source_frames, args.size)
        jpeg_bytes = np.mean([os.path.getsize(os.path.join(folders[0], name))
                              for name in os.listdir(folders[0])])
        print(f'{args.clips} clips of {args.source_frames} frames at {args.size} x {args.size} '
              f'(JPEG ~{jpeg_bytes / 1024:.1f} KiB per frame); training pipeline, '
              f'{args.frames} frames -> {args.input_size} x {args.input_size}')
        for name, paths in (('JPEG folders', folders), ('mp4 (decord)', videos)):
            dataset = _training_dataset(paths, args.frames, args.input_size)
            rate, cpu_rate = clips_per_second_in_process(dataset, args.iterations)
            print(f'{name:>13}: {rate:7.1f} clips/s per worker (one process, one thread; '
                  f'{cpu_rate:.1f} per CPU-second)')
            if args.workers:
                rate = clips_per_second_with_loader(dataset, args.workers, args.iterations)
                print(f'{name:>13}: {rate:7.1f} clips/s through a DataLoader with {args.workers} '
                      f'workers ({rate / args.workers:.1f} per worker)')
    return 0


def add_loader_command(subparsers):
    """Register the ``loader`` subcommand."""
    parser = subparsers.add_parser('loader', help='data loading: clips/s per worker (JPEG and mp4)')
    parser.add_argument('--clips', type=int, default=8, help='distinct clips written')
    parser.add_argument('--source-frames', type=int, default=64, help='frames per written clip')
    parser.add_argument('--size', type=int, default=224, help='side of the written frames')
    parser.add_argument('--frames', type=int, default=16, help='frames sampled per clip (T)')
    parser.add_argument('--input-size', type=int, default=224, help='network input side (S)')
    parser.add_argument('--iterations', type=int, default=200, help='clips timed per format')
    parser.add_argument('--workers', type=int, default=0, help='also time a DataLoader with this '
                        'many workers (0: skip)')
    parser.set_defaults(run=run_loader_benchmark)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def main(argv=None):
    """Run the benchmark named by the first argument; returns the exit status."""
    parser = argparse.ArgumentParser(prog='python -m scripts.benchmark', description=__doc__.split('\n')[0])
    subparsers = parser.add_subparsers(dest='command', required=True)
    add_loader_command(subparsers)
    add_model_commands(subparsers)  # train, eval, model, flops, reference (scripts/model_benchmark.py)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(run_command(main))
