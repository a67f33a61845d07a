"""The synthetic dataset: files and lists, determinism, time-reversed class pairs, the moving part
visible in every single frame, noise frames, ensure_synthetic_dataset and the script."""
import filecmp
import json
import os

import numpy as np
import pytest

from conftest import tiny_config
from datasets.annotations import read_annotation_list
from datasets.decoding import decord  # imported after OpenCV and torchvision (datasets/decoding.py)
from datasets.synthetic import (CLASSES, GENERATOR_VERSION, PARTS, draw_clips, ensure_synthetic_dataset,
                                generate_synthetic_dataset, sample_clip_parameters)
from scripts import make_synthetic_dataset
from utils.config import ConfigError
from utils.labels import read_label_csv

PAIRS = [(0, 1), (2, 3), (4, 5)]


def small_settings(**changes):
    synthetic = tiny_config().DATA.SYNTHETIC.clone()
    synthetic.defrost()
    synthetic.TRAIN_PER_CLASS, synthetic.TEST_PER_CLASS, synthetic.CLIP_LENGTH = 2, 1, 12
    synthetic.FRAME_SIZE, synthetic.NOISE_FRAMES = 32, 3
    for key, value in changes.items():
        synthetic[key] = value
    return synthetic


def synthetic_config(root, **overrides):
    settings = dict(DATA__ROOT=root, DATA__TRAIN_FILE=os.path.join(root, 'train.txt'),
                    DATA__VAL_FILE=os.path.join(root, 'test.txt'),
                    DATA__LABEL_LIST=os.path.join(root, 'labels.csv'), DATA__NUM_CLASSES=7,
                    DATA__SYNTHETIC__GENERATE=True, DATA__SYNTHETIC__TRAIN_PER_CLASS=2,
                    DATA__SYNTHETIC__TEST_PER_CLASS=1, DATA__SYNTHETIC__CLIP_LENGTH=8,
                    DATA__SYNTHETIC__FRAME_SIZE=32, DATA__SYNTHETIC__NOISE_FRAMES=2)
    return tiny_config(**{**settings, **overrides})


def render(labels, synthetic, seed=0, still_eyes=False):
    params = sample_clip_parameters(np.random.default_rng(seed), np.array(labels), synthetic)
    if still_eyes:
        params['openness'][:] = 1.0
    frames = draw_clips(params, synthetic.CLIP_LENGTH, synthetic.FRAME_SIZE, synthetic.PIXEL_NOISE,
                        synthetic.NOISE_FRAMES, np.random.default_rng(seed))
    return params, frames


@pytest.mark.parametrize('storage', ['frames', 'video'])
def test_files_lists_and_labels(tmp_path, storage):
    synthetic = small_settings(FORMAT=storage)
    counts = generate_synthetic_dataset(str(tmp_path), synthetic)
    assert counts == {'train': 14, 'test': 7}
    assert read_label_csv(str(tmp_path / 'labels.csv')) == [name for name, _, _ in CLASSES]
    for split, per_class in (('train', 2), ('test', 1)):
        entries = read_annotation_list(str(tmp_path / f'{split}.txt'), str(tmp_path), 7)
        assert sorted(e.label for e in entries) == sorted(list(range(7)) * per_class)
        for entry in entries:
            assert entry.num_frames == 12
            if storage == 'frames':
                assert sorted(os.listdir(entry.path)) == [f'{i:03d}.jpg' for i in range(12)]
            else:
                reader = decord.VideoReader(entry.path)
                assert len(reader) == 12 and reader[0].shape == (32, 32, 3)
    assert not os.path.exists(tmp_path / ('videos' if storage == 'frames' else 'frames'))


def test_generation_is_deterministic_for_a_seed(tmp_path):
    for name, seed in (('a', 0), ('b', 0), ('c', 1)):
        generate_synthetic_dataset(str(tmp_path / name), small_settings(SEED=seed))
    same = filecmp.dircmp(tmp_path / 'a' / 'frames' / 'train', tmp_path / 'b' / 'frames' / 'train')
    assert not same.diff_files and not same.left_only and not same.right_only
    clip = os.path.join('frames', 'train', '00003')
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a' / clip, tmp_path / 'b' / clip,
                                               [f'{i:03d}.jpg' for i in range(12)], shallow=False)
    assert len(match) == 12 and not mismatch and not errors
    _, mismatch, _ = filecmp.cmpfiles(tmp_path / 'a' / clip, tmp_path / 'c' / clip,
                                      [f'{i:03d}.jpg' for i in range(12)], shallow=False)
    assert mismatch
    assert filecmp.cmp(tmp_path / 'a' / 'train.txt', tmp_path / 'b' / 'train.txt', shallow=False)


@pytest.mark.parametrize('forward, backward', PAIRS)
def test_paired_classes_are_time_reversals(forward, backward):
    synthetic = small_settings(DRIFT=0.0, PIXEL_NOISE=0.0, NOISE_FRAMES=0)
    params_forward, frames_forward = render([forward], synthetic, seed=3, still_eyes=True)
    params_backward, frames_backward = render([backward], synthetic, seed=3, still_eyes=True)
    part = CLASSES[forward][1]
    np.testing.assert_allclose(params_backward[part], params_forward[part][:, ::-1])
    np.testing.assert_array_equal(frames_backward, frames_forward[:, ::-1])
    # so one frame, or the set of frames, cannot tell the direction; the order can
    assert not np.array_equal(frames_forward, frames_backward)


@pytest.mark.parametrize('label', range(7))
def test_every_frame_shows_which_part_moves(label):
    synthetic = small_settings(PIXEL_NOISE=0.0, NOISE_FRAMES=0)
    params, frames = render([label] * 6, synthetic, seed=label)
    moving = CLASSES[label][1]
    for part in PARTS:
        displacement = params[part]  # [N, L] in face half-heights
        if part == moving:
            assert displacement.min() >= 0.75 * synthetic.ONSET_LEVEL * 0.2  # displaced in every frame
            assert (displacement.max(axis=1) > 0.15).all()
        else:
            assert (displacement == 0).all()
    if moving is None:
        return
    # the pixels show it: redraw the clips with the part at rest; every single frame changes
    resting = dict(params, **{moving: np.zeros_like(params[moving])})
    at_rest = draw_clips(resting, synthetic.CLIP_LENGTH, synthetic.FRAME_SIZE, 0.0, 0,
                         np.random.default_rng(label))
    changed = np.abs(frames.astype(int) - at_rest.astype(int)).max(axis=(2, 3, 4))  # [N, L]
    assert (changed >= 20).all()


def test_noise_frames_form_one_run_of_pure_noise():
    synthetic = small_settings(PIXEL_NOISE=0.0, NOISE_FRAMES=3)
    params, frames = render([0, 3, 6, 6], synthetic, seed=5)
    rows = np.arange(synthetic.CLIP_LENGTH)
    for clip, start in zip(frames, params['noise_start']):
        noisy = (rows >= start) & (rows < start + 3)
        # a drawn frame is piecewise flat: neighbouring pixels mostly equal; noise is not
        flat_share = (np.abs(np.diff(clip.astype(int), axis=2)).max(axis=-1) < 3).mean(axis=(1, 2))
        assert (flat_share[noisy] < 0.1).all() and (flat_share[~noisy] > 0.6).all()


def test_ensure_generates_once_and_again_when_a_setting_changes(tmp_path):
    root = str(tmp_path / 'synthetic')
    assert ensure_synthetic_dataset(synthetic_config(root, DATA__SYNTHETIC__GENERATE=False)) is False
    assert not os.path.exists(root)
    config = synthetic_config(root)
    assert ensure_synthetic_dataset(config) is True
    stamp = os.path.getmtime(os.path.join(root, 'train.txt'))
    assert ensure_synthetic_dataset(config) is False
    assert os.path.getmtime(os.path.join(root, 'train.txt')) == stamp
    assert ensure_synthetic_dataset(synthetic_config(root, DATA__SYNTHETIC__FORMAT='video')) is True
    assert read_annotation_list(os.path.join(root, 'train.txt'), root, 7)[0].path.endswith('.mp4')
    assert not os.path.exists(os.path.join(root, 'frames'))
    os.remove(os.path.join(root, 'labels.csv'))
    assert ensure_synthetic_dataset(synthetic_config(root, DATA__SYNTHETIC__FORMAT='video')) is True


@pytest.mark.parametrize('override, key', [
    ({'DATA__TRAIN_FILE': 'elsewhere/train.txt'}, 'DATA.TRAIN_FILE'),
    ({'DATA__LABEL_LIST': 'labels/dfew_7_AUE_labels.csv'}, 'DATA.LABEL_LIST'),
    ({'DATA__NUM_CLASSES': 11}, 'DATA.NUM_CLASSES'),
    ({'DATA__SYNTHETIC__NOISE_FRAMES': 5}, 'DATA.SYNTHETIC.NOISE_FRAMES'),
    ({'DATA__ROOT': ''}, 'DATA.ROOT'),
])
def test_ensure_names_the_key_that_does_not_fit(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace('.', r'\.')):
        ensure_synthetic_dataset(synthetic_config(str(tmp_path / 'root'), **override))


def test_a_foreign_dataset_folder_is_never_replaced(tmp_path):
    os.makedirs(tmp_path / 'frames' / 'precious')
    with pytest.raises(ConfigError, match='not a generated synthetic dataset'):
        generate_synthetic_dataset(str(tmp_path), small_settings())
    assert os.path.isdir(tmp_path / 'frames' / 'precious')


def test_script_generates_and_prints_the_config_keys(tmp_path, capsys):
    root = str(tmp_path / 'out')
    status = make_synthetic_dataset.main(['--root', root, '--opts', 'DATA.SYNTHETIC.TRAIN_PER_CLASS', '1',
                                          'DATA.SYNTHETIC.TEST_PER_CLASS', '1',
                                          'DATA.SYNTHETIC.FORMAT', 'video'])
    assert status == 0
    output = capsys.readouterr().out
    assert f'DATA.TRAIN_FILE {root}/train.txt' in output and 'DATA.NUM_CLASSES 7' in output
    assert len(read_annotation_list(os.path.join(root, 'train.txt'), root, 7)) == 7
    assert make_synthetic_dataset.main(['--root', root, '--opts', 'DATA.SYNTHETIC.MOTION', '0']) == 2
    assert 'DATA.SYNTHETIC.MOTION' in capsys.readouterr().err


def test_a_dataset_drawn_by_an_older_generator_is_regenerated(tmp_path):
    root = str(tmp_path / 'synthetic')
    config = synthetic_config(root)
    assert ensure_synthetic_dataset(config) is True
    settings_path = os.path.join(root, 'synthetic.json')
    with open(settings_path) as f:
        settings = json.load(f)
    assert settings['GENERATOR_VERSION'] == GENERATOR_VERSION
    settings['GENERATOR_VERSION'] = GENERATOR_VERSION - 1  # as written before the drawing changed
    with open(settings_path, 'w') as f:
        json.dump(settings, f)
    assert ensure_synthetic_dataset(config) is True
    with open(settings_path) as f:
        assert json.load(f)['GENERATOR_VERSION'] == GENERATOR_VERSION
