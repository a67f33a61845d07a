"""Data loaders for the current process: training, optional validation split, and test."""
import logging
from collections import defaultdict
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from datasets.annotations import drop_short_videos, read_annotation_list
from datasets.decoding import VideoReadError, find_missing_files
from datasets.samplers import ExactSplitSampler, StridedPermutationSampler
from datasets.transforms import build_test_transform, build_train_transform
from datasets.video_dataset import VideoDataset, collate_clips
from utils.config import ConfigError, eval_batch_size

logger = logging.getLogger(__name__)

# Problems listed in the DATA.CHECK_FILES error before "...".
MAX_LISTED_PROBLEMS = 10


@dataclass
class DataLoaders:
    """The loaders of one process; ``val`` is None unless ``DATA.VAL_FRACTION`` > 0, ``train`` and
    ``val`` are None with ``TEST.ONLY_TEST``, ``test`` is None when ``DATA.VAL_FILE`` is empty."""
    train: DataLoader | None
    val: DataLoader | None
    test: DataLoader | None


class VideoDataLoader(DataLoader):
    """A ``DataLoader`` that accounts for the videos ``DATA.SKIP_BAD`` replaced.

    Items carry the messages of the unreadable videos they replaced (met in a worker, they reach this
    process with the batch). Iterating removes them from each batch, logs every unreadable file once,
    and counts the replaced items in ``num_replaced`` (reset at the start of each pass, so after an
    epoch it holds that epoch's count).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_replaced = 0
        self.reported_messages = set()

    def __iter__(self):
        self.num_replaced = 0
        for batch in super().__iter__():
            for messages in batch.pop('bad_samples'):
                self.num_replaced += bool(messages)
                for message in messages:
                    if message in self.reported_messages:
                        continue
                    self.reported_messages.add(message)
                    logger.warning('unreadable video replaced by another (DATA.SKIP_BAD): %s', message)
            yield batch
        if self.num_replaced:
            logger.warning('%d samples of this pass were replaced because their videos are unreadable '
                           '(DATA.SKIP_BAD)', self.num_replaced)


def seed_worker(worker_id):
    """Worker initialisation: seed numpy from torch's per-worker seed, one OpenCV thread.

    torch seeds worker w with ``base_seed + w``, where ``base_seed`` comes from the loader's generator
    (seeded with ``SEED + rank``), so every draw depends on the seed, the rank and the worker id.
    """
    np.random.seed(torch.initial_seed() % 2 ** 32)
    cv2.setNumThreads(1)


def load_entries(list_file, config):
    """Read a list (labels checked against ``DATA.NUM_CLASSES``) and drop videos shorter than 3 frames."""
    entries = read_annotation_list(list_file, config.DATA.ROOT, config.DATA.NUM_CLASSES)
    return drop_short_videos(entries)


def split_validation(entries, fraction, seed):
    """Hold out ``round(fraction * n_c)`` random videos of every class c (seeded, stratified).

    Returns:
        tuple: (training entries, validation entries), each in list order.
    """
    positions_by_label = defaultdict(list)
    for position, entry in enumerate(entries):
        positions_by_label[entry.label].append(position)
    generator = torch.Generator().manual_seed(seed)
    held_out = set()
    for label in sorted(positions_by_label):
        positions = positions_by_label[label]
        order = torch.randperm(len(positions), generator=generator).tolist()
        held_out.update(positions[i] for i in order[:round(fraction * len(positions))])
    if not held_out:
        raise ConfigError(f'DATA.VAL_FRACTION = {fraction} holds out no video of a list of '
                         f'{len(entries)}: raise it or set it to 0')
    return ([entry for i, entry in enumerate(entries) if i not in held_out],
            [entry for i, entry in enumerate(entries) if i in held_out])


def check_files(entries):
    """The ``DATA.CHECK_FILES`` pass: every path exists and no frame folder is empty.

    Raises:
        VideoReadError: listing the problems (file and list line), the first ``MAX_LISTED_PROBLEMS``.
    """
    problems = find_missing_files(entries)
    if problems:
        listed = '\n'.join(f'  {entry.location}: {entry.path}: {reason}'
                           for entry, reason in problems[:MAX_LISTED_PROBLEMS])
        more = '\n  ...' if len(problems) > MAX_LISTED_PROBLEMS else ''
        raise VideoReadError(f'DATA.CHECK_FILES: {len(problems)} of {len(entries)} videos are missing '
                             f'or empty:\n{listed}{more}')


def _loader_options(config, rank, persistent_workers):
    workers = config.DATA.NUM_WORKERS
    return dict(num_workers=workers, collate_fn=collate_clips, pin_memory=torch.cuda.is_available(),
                persistent_workers=persistent_workers and workers > 0, worker_init_fn=seed_worker,
                generator=torch.Generator().manual_seed(config.SEED + rank))


def _training_loader(dataset, config, rank, world_size):
    # One process uses the same sampler as many, so that N processes x batch B read, step for step, the
    # videos of one process x batch N * B (docs/distributed.md, section 4).
    sampler = StridedPermutationSampler(dataset, rank, world_size, config.SEED)
    if len(sampler) < config.TRAIN.BATCH_SIZE:
        raise ConfigError(f'{config.DATA.TRAIN_FILE}: {len(sampler)} training videos per process are '
                         f'fewer than TRAIN.BATCH_SIZE = {config.TRAIN.BATCH_SIZE} (the last partial '
                         f'batch is dropped, so an epoch would be empty)')
    return VideoDataLoader(dataset, batch_size=config.TRAIN.BATCH_SIZE, sampler=sampler, drop_last=True,
                           # New workers each epoch: their random streams are seeded from the
                           # loader's generator, which the engine re-seeds with (SEED, epoch), so a
                           # resumed run draws the same augmentations (docs/data.md, 'Reproducibility').
                           **_loader_options(config, rank, persistent_workers=False))


def _evaluation_loader(dataset, config, rank, world_size):
    sampler = ExactSplitSampler(len(dataset), rank, world_size)
    batch_size = eval_batch_size(config)
    return VideoDataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False,
                           **_loader_options(config, rank, persistent_workers=True))


def _dataset(entries, config, train):
    transform = build_train_transform(config) if train else build_test_transform(config)
    return VideoDataset(entries, config.DATA.NUM_FRAMES, transform, train, config.TEST.NUM_CLIP,
                        config.DATA.SKIP_BAD, config.DATA.FRAME_ORDER)


def build_dataloaders(config, rank=0, world_size=1):
    """Build this process's loaders from ``DATA.TRAIN_FILE``, ``DATA.VAL_FILE`` and the settings.

    Training: shuffled by a ``StridedPermutationSampler`` (seeded with ``SEED``, the same order for any
    number of processes), ``drop_last``.
    Validation (``DATA.VAL_FRACTION`` > 0, held out of the training list) and test: deterministic views,
    an exact split of the list across ranks. Batches: dicts with ``videos`` uint8 (train
    ``[B, T, 3, S, S]``, evaluation ``[B, V, T, 3, S, S]``, view ``clip * TEST.NUM_CROP + crop``; in
    the decoders' channels-last memory, made contiguous by ``normalize_videos``), ``labels`` and
    ``indices`` int64 ``[B]`` (``indices``: positions in ``loader.dataset.entries``).

    Args:
        config: the run's config.
        rank: this process's rank.
        world_size: number of processes.

    Returns:
        DataLoaders: ``train``, ``val``, ``test``.
    """
    train_entries = [] if config.TEST.ONLY_TEST else load_entries(config.DATA.TRAIN_FILE, config)
    test_entries = load_entries(config.DATA.VAL_FILE, config) if config.DATA.VAL_FILE else []
    val_entries = []
    if train_entries and config.DATA.VAL_FRACTION > 0:
        train_entries, val_entries = split_validation(train_entries, config.DATA.VAL_FRACTION,
                                                      config.SEED)
    if config.DATA.CHECK_FILES:
        check_files(train_entries + val_entries + test_entries)
    logger.info('videos: %d training, %d validation, %d test', len(train_entries), len(val_entries),
                len(test_entries))
    return DataLoaders(
        train=(_training_loader(_dataset(train_entries, config, True), config, rank, world_size)
               if train_entries else None),
        val=(_evaluation_loader(_dataset(val_entries, config, False), config, rank, world_size)
             if val_entries else None),
        test=(_evaluation_loader(_dataset(test_entries, config, False), config, rank, world_size)
              if test_entries else None))
