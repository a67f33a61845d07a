"""Loaders: batch formats, the exact test split across ranks, the validation split, seeded workers,
bad input (corrupt JPEG, truncated mp4, missing / empty folder) and DATA.SKIP_BAD."""
import logging
import os
import shutil
from collections import Counter

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from conftest import tiny_config
from datasets import build_dataloaders
from datasets.build import split_validation
from datasets.annotations import AnnotationEntry
from datasets.decoding import VideoReadError, open_video
from datasets.samplers import ExactSplitSampler
from datasets.synthetic import generate_synthetic_dataset, write_frame_folder
from utils.engine import start_loader_epoch

NUM_CLASSES = 7

# torchvision 0.29's notice that TorchCodec will replace its image decoders (pytest re-enables it)
pytestmark = pytest.mark.filterwarnings('ignore:The image decoding and encoding capabilities')


def synthetic_settings(storage):
    synthetic = tiny_config().DATA.SYNTHETIC.clone()
    synthetic.defrost()
    synthetic.TRAIN_PER_CLASS, synthetic.TEST_PER_CLASS = 3, 1
    synthetic.CLIP_LENGTH, synthetic.FRAME_SIZE, synthetic.NOISE_FRAMES = 10, 32, 2
    synthetic.FORMAT = storage
    return synthetic


@pytest.fixture(scope='module')
def dataset_roots(tmp_path_factory):
    """Small synthetic datasets: {'frames': root, 'video': root}, 21 training and 7 test clips each."""
    roots = {}
    for storage in ('frames', 'video'):
        roots[storage] = str(tmp_path_factory.mktemp(storage))
        generate_synthetic_dataset(roots[storage], synthetic_settings(storage))
    return roots


def loader_config(root, train_file=None, test_file=None, **overrides):
    train_file = os.path.join(root, 'train.txt') if train_file is None else train_file
    return tiny_config(DATA__ROOT=root, DATA__TRAIN_FILE=train_file,
                       DATA__VAL_FILE=test_file or os.path.join(root, 'test.txt'),
                       DATA__NUM_CLASSES=NUM_CLASSES, **overrides)


def copy_list_with(root, tmp_path, extra_lines, name='broken.txt', source='test.txt'):
    """A copy of a dataset list with ``extra_lines`` appended; returns (path, first extra line number)."""
    with open(os.path.join(root, source)) as f:
        lines = f.readlines()
    path = tmp_path / name
    path.write_text(''.join(lines + extra_lines))
    return str(path), len(lines) + 1


# ----------------------------------------------------------------------------------------------------
# Splitting across ranks
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('num_samples', [0, 1, 5, 7, 8, 13, 100])
@pytest.mark.parametrize('world_size', [1, 2, 3, 4, 8])
def test_exact_split_covers_every_video_once(num_samples, world_size):
    parts = [list(ExactSplitSampler(num_samples, rank, world_size)) for rank in range(world_size)]
    assert sorted(index for part in parts for index in part) == list(range(num_samples))
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == [len(ExactSplitSampler(num_samples, rank, world_size)) for rank in range(world_size)]


@pytest.mark.parametrize('world_size', [2, 3])
def test_test_loaders_of_all_ranks_yield_each_video_once(dataset_roots, world_size):
    root = dataset_roots['frames']
    config = loader_config(root, TEST__BATCH_SIZE=2)
    seen = []
    for rank in range(world_size):
        loaders = build_dataloaders(config, rank=rank, world_size=world_size)
        assert isinstance(loaders.train.sampler, DistributedSampler)
        assert (loaders.train.sampler.rank, loaders.train.sampler.num_replicas) == (rank, world_size)
        for batch in loaders.test:
            seen += batch['indices'].tolist()
            entries = loaders.test.dataset.entries
            assert batch['labels'].tolist() == [entries[i].label for i in batch['indices'].tolist()]
    assert sorted(seen) == list(range(7))


# ----------------------------------------------------------------------------------------------------
# Batch formats and loader settings
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('storage', ['frames', 'video'])
def test_batch_formats(dataset_roots, storage):
    config = loader_config(dataset_roots[storage], TEST__NUM_CLIP=2, TEST__NUM_CROP=3)
    loaders = build_dataloaders(config)
    assert loaders.val is None
    batch = next(iter(loaders.train))
    assert set(batch) == {'videos', 'labels', 'indices'}
    assert batch['videos'].shape == (2, 8, 3, 32, 32) and batch['videos'].dtype == torch.uint8
    assert batch['labels'].dtype == torch.int64 and batch['indices'].dtype == torch.int64
    entries = loaders.train.dataset.entries
    assert batch['labels'].tolist() == [entries[i].label for i in batch['indices'].tolist()]
    test_batch = next(iter(loaders.test))
    assert test_batch['videos'].shape == (2, 6, 8, 3, 32, 32)  # V = 2 clips x 3 crops
    assert test_batch['indices'].tolist() == [0, 1]
    assert len(loaders.train) == 21 // 2 and len(loaders.test) == 4  # drop_last for training only


def test_loader_settings(dataset_roots):
    config = loader_config(dataset_roots['frames'], DATA__NUM_WORKERS=1)
    loaders = build_dataloaders(config)
    for loader in (loaders.train, loaders.test):
        assert loader.num_workers == 1 and loader.pin_memory == torch.cuda.is_available()
    assert loaders.train.drop_last and not loaders.test.drop_last


def test_an_epochs_batches_depend_only_on_seed_and_epoch_as_a_resumed_run_needs(dataset_roots):
    # A resumed run builds new loaders and starts at epoch 1: it must see what the running one saw.
    config = loader_config(dataset_roots['frames'], DATA__NUM_WORKERS=1, AUG__COLOR_JITTER=0.8)

    def epoch_batches(loader, epoch):
        start_loader_epoch(loader, epoch, config.SEED)
        return [batch['videos'] for batch in loader]

    running = build_dataloaders(config).train
    epoch_batches(running, 0)
    continued = epoch_batches(running, 1)
    resumed = epoch_batches(build_dataloaders(config).train, 1)
    assert all(torch.equal(a, b) for a, b in zip(continued, resumed, strict=True))


def test_workers_are_seeded_by_seed_and_rank(dataset_roots):
    def first_batch(seed, rank):
        config = loader_config(dataset_roots['frames'], DATA__NUM_WORKERS=1, SEED=seed)
        return next(iter(build_dataloaders(config, rank=rank, world_size=2).train))['videos']

    first = first_batch(1, 0)
    assert torch.equal(first, first_batch(1, 0))
    assert not torch.equal(first, first_batch(1, 1))
    assert not torch.equal(first, first_batch(2, 0))


def test_validation_split_is_stratified_seeded_and_disjoint(dataset_roots):
    root = dataset_roots['frames']
    loaders = build_dataloaders(loader_config(root, DATA__VAL_FRACTION=0.34))
    train_entries, val_entries = loaders.train.dataset.entries, loaders.val.dataset.entries
    assert Counter(e.label for e in val_entries) == Counter({label: 1 for label in range(7)})
    assert Counter(e.label for e in train_entries) == Counter({label: 2 for label in range(7)})
    assert not {e.path for e in train_entries} & {e.path for e in val_entries}
    assert next(iter(loaders.val))['videos'].shape == (2, 1, 8, 3, 32, 32)  # test-style views
    again = build_dataloaders(loader_config(root, DATA__VAL_FRACTION=0.34)).val.dataset.entries
    assert again == val_entries
    other_seed = split_validation(train_entries + val_entries, 0.34, seed=5)[1]
    assert {e.path for e in other_seed} != {e.path for e in val_entries}


def test_only_test_builds_no_training_loader(dataset_roots):
    config = loader_config(dataset_roots['frames'], train_file='', TEST__ONLY_TEST=True)
    loaders = build_dataloaders(config)
    assert loaders.train is None and loaders.val is None and len(loaders.test.dataset) == 7


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def bad_clips(dataset_roots, tmp_path_factory):
    """Broken copies of good clips inside the frames dataset's root: {kind: relative path}."""
    frames_root, video_root = dataset_roots['frames'], dataset_roots['video']
    corrupt = os.path.join(frames_root, 'bad', 'corrupt_jpeg')
    shutil.copytree(os.path.join(frames_root, 'frames', 'test', '00000'), corrupt)
    with open(os.path.join(corrupt, '004.jpg'), 'wb') as f:
        f.write(b'\xff\xd8\xff\xe0 this is not a JPEG ' * 20)
    truncated = os.path.join(frames_root, 'bad', 'truncated.mp4')
    with open(os.path.join(video_root, 'videos', 'test', '00000.mp4'), 'rb') as f:
        data = f.read()
    with open(truncated, 'wb') as f:
        f.write(data[:len(data) // 2])
    os.makedirs(os.path.join(frames_root, 'bad', 'empty'))
    return {'corrupt_jpeg': 'bad/corrupt_jpeg', 'truncated_mp4': 'bad/truncated.mp4',
            'missing': 'bad/does_not_exist', 'empty': 'bad/empty'}


@pytest.mark.parametrize('kind, message', [
    ('corrupt_jpeg', 'cannot decode the image'),
    ('truncated_mp4', 'video'),
    ('missing', 'not found'),
    ('empty', 'without .jpg/.png files'),
])
def test_bad_input_names_the_file_and_the_list_line(dataset_roots, bad_clips, tmp_path, kind, message):
    root = dataset_roots['frames']
    list_file, line = copy_list_with(root, tmp_path, [f'{bad_clips[kind]} 10 3\n'])
    loaders = build_dataloaders(loader_config(root, test_file=list_file, TEST__BATCH_SIZE=8))
    with pytest.raises(VideoReadError) as error:
        next(iter(loaders.test))
    text = str(error.value)
    assert f'{list_file}:{line}:' in text and message in text
    expected_file = os.path.join(root, bad_clips[kind], '004.jpg' if kind == 'corrupt_jpeg' else '')
    assert expected_file.rstrip('/') in text


def test_check_files_lists_missing_and_empty_before_training(dataset_roots, bad_clips, tmp_path):
    root = dataset_roots['frames']
    list_file, line = copy_list_with(root, tmp_path, ['bad/does_not_exist 10 1\n', 'bad/empty 10 2\n'],
                                     source='train.txt')
    config = loader_config(root, train_file=list_file, DATA__CHECK_FILES=True)
    with pytest.raises(VideoReadError) as error:
        build_dataloaders(config)
    text = str(error.value)
    assert '2 of 30 videos are missing or empty' in text  # 21 + 2 training, 7 test
    assert f'{list_file}:{line}:' in text and f'{list_file}:{line + 1}:' in text
    build_dataloaders(loader_config(root, DATA__CHECK_FILES=True))  # the good lists pass


@pytest.mark.parametrize('workers', [0, 2])
def test_skip_bad_completes_the_epoch_and_counts_the_replacements(dataset_roots, bad_clips, tmp_path,
                                                                  caplog, workers):
    root = dataset_roots['frames']
    extra = [f'{bad_clips[kind]} 10 3\n' for kind in ('corrupt_jpeg', 'truncated_mp4', 'missing')]
    list_file, _ = copy_list_with(root, tmp_path, extra)
    config = loader_config(root, test_file=list_file, DATA__SKIP_BAD=True, DATA__NUM_WORKERS=workers,
                           TEST__BATCH_SIZE=4)
    loader = build_dataloaders(config).test
    with caplog.at_level(logging.WARNING, logger='datasets.build'):
        for _ in range(2):  # two epochs: each bad file is logged once, the count is per epoch
            indices = [i for batch in loader for i in batch['indices'].tolist()]
            assert len(indices) == 10 and loader.num_replaced == 3
    # the last three (bad) items were replaced by the next readable videos: 0, then 0 again
    assert sorted(set(indices)) == list(range(7))
    replaced = [r.getMessage() for r in caplog.records if 'unreadable video replaced' in r.getMessage()]
    assert len(replaced) == 3 and all(list_file in message for message in replaced)
    totals = [r.getMessage() for r in caplog.records if 'samples of this pass were replaced' in r.getMessage()]
    assert len(totals) == 2 and totals[0].startswith('3 samples')


def test_a_folder_of_unpadded_frame_names_is_read_in_the_configured_order(tmp_path):
    folder = tmp_path / 'clip'
    write_frame_folder(str(folder), np.stack([np.full((16, 16, 3), 20 * i, np.uint8) for i in range(11)]))
    for name in os.listdir(folder):  # 0.jpg .. 10.jpg in the writer's order; make sure they are unpadded
        number = int(os.path.splitext(name)[0])
        os.rename(folder / name, folder / f'frame_{number}.jpg')
    entry = AnnotationEntry(str(folder), None, 0, 'list.txt', 1)
    levels = {order: open_video(entry, order).read(range(11))[:, 0, 8, 8].tolist()
              for order in ('natural', 'lexicographic')}
    # natural: frame_0, frame_1, ..., frame_10; as strings: frame_0, frame_1, frame_10, frame_2, ...
    expected_lexicographic = [0, 1, 10, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [round(level / 20) for level in levels['natural']] == list(range(11))
    assert [round(level / 20) for level in levels['lexicographic']] == expected_lexicographic


def test_a_still_image_is_refused_as_not_a_video(tmp_path):
    write_frame_folder(str(tmp_path / 'frames'), np.zeros((1, 16, 16, 3), np.uint8))
    photo = tmp_path / 'frames' / '000.jpg'
    with pytest.raises(VideoReadError, match=rf'list.txt:3: {photo}: a still image, not a video'):
        open_video(AnnotationEntry(str(photo), None, 0, 'list.txt', 3))


def test_png_frame_folders_are_read_beside_decord(tmp_path):
    # decord's own zlib must not take over the PNG decoding (datasets/decoding.py imports it last)
    folder = tmp_path / 'clip'
    folder.mkdir()
    for index in range(3):
        assert cv2.imwrite(str(folder / f'{index}.png'), np.full((16, 16, 3), 40 * index, np.uint8))
    frames = open_video(AnnotationEntry(str(folder), None, 0, 'list.txt', 1)).read([0, 1, 2])
    assert frames[:, :, 8, 8].tolist() == [[0] * 3, [40] * 3, [80] * 3]
