"""Configuration: defaults, the official YAML, BASE inheritance, flags, and named validation errors."""
import argparse
import textwrap

import pytest

from utils.config import (ConfigError, add_config_arguments, get_default_config, load_config,
                          merge_config_file, validate_config)
from utils.labels import read_label_csv

OFFICIAL_YAML = """\
DATA:
    ROOT: '/home/'
    TRAIN_FILE: '/home/data/DFEW_set_3_train.txt'
    VAL_FILE: '/home/data/DFEW_set_3_validate.txt'
    DATASET: dfew
    NUM_FRAMES: 16
    NUM_DIVIDE: 4
    NUM_CLASSES: 7
    LABEL_LIST: '/home/data/DK-CLIP/labels2prompt/dfew_7_AUE_labels.csv'
MODEL:
    ARCH: ViT-B/16
TRAIN:
    BATCH_SIZE: 8
    ACCUMULATION_STEPS: 2
    EPOCHS: 50
    LR: 2.e-6
"""


def parse(argv):
    return add_config_arguments(argparse.ArgumentParser()).parse_args(argv)


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def valid(tmp_path):
    """A config whose files exist: lists in tmp_path and the shipped DFEW label CSV."""
    config = get_default_config()
    config.DATA.TRAIN_FILE = write(tmp_path / 'train.txt', 'a 16 0\n')
    config.DATA.VAL_FILE = write(tmp_path / 'test.txt', 'b 16 1\n')
    config.OUTPUT = str(tmp_path / 'out')
    return config


def test_defaults_are_the_published_settings():
    config = get_default_config()
    assert (config.MODEL.ARCH, config.DATA.NUM_FRAMES, config.DATA.NUM_DIVIDE) == ('ViT-B/16', 16, 4)
    assert (config.TRAIN.LR, config.TRAIN.EPOCHS, config.TRAIN.WARMUP_EPOCHS) == (2e-6, 50, 5)
    assert (config.TRAIN.BATCH_SIZE, config.TRAIN.ACCUMULATION_STEPS) == (8, 2)
    assert (config.TRAIN.WEIGHT_DECAY, config.TRAIN.OPT_LEVEL) == (0.001, 'O1')
    assert (config.MODEL.ERASE_THRESHOLD, config.TRAIN.CONSISTENCY_EPOCHS) == (0.15, 14)
    assert config.MODEL.FIX_TEXT and not config.MODEL.TRAIN_INTEGRATION
    assert read_label_csv(config.DATA.LABEL_LIST)[0] == \
        'happiness with cheek raiser and lip corner puller or part'


def test_default_config_is_a_fresh_copy():
    first = get_default_config()
    first.TRAIN.LR = 1.0
    assert get_default_config().TRAIN.LR == 2e-6


def test_official_yaml_loads_unchanged(tmp_path):
    config = load_config(parse(['--config', write(tmp_path / 'official.yaml', OFFICIAL_YAML)]))
    assert config.DATA.ROOT == '/home/' and config.DATA.NUM_DIVIDE == 4
    assert config.TRAIN.LR == 2e-6 and isinstance(config.TRAIN.LR, float)
    assert config.DATA.LABEL_LIST.endswith('dfew_7_AUE_labels.csv')


def test_base_inheritance_is_relative_to_the_including_file(tmp_path):
    (tmp_path / 'bases').mkdir()
    write(tmp_path / 'bases' / 'root.yaml', 'TRAIN:\n  EPOCHS: 7\n  LR: 1.0e-5\n')
    write(tmp_path / 'bases' / 'dataset.yaml', "BASE: ['root.yaml']\nDATA:\n  NUM_CLASSES: 11\n")
    fold = write(tmp_path / 'fold1.yaml', "BASE: ['bases/dataset.yaml']\nTRAIN:\n  LR: 3.0e-5\n")
    config = merge_config_file(get_default_config(), fold)
    assert (config.TRAIN.EPOCHS, config.DATA.NUM_CLASSES, config.TRAIN.LR) == (7, 11, 3e-5)


def test_flags_and_opts_override_the_file(tmp_path):
    path = write(tmp_path / 'c.yaml', 'TRAIN:\n  BATCH_SIZE: 4\n')
    config = load_config(parse(['--config', path, '--opts', 'TRAIN.LR', '5e-6', 'DATA.NUM_DIVIDE', '2',
                                '--output', 'runs/x', '--resume', 'r.pth', '--pretrained', 'w.pt',
                                '--only_test', '--batch-size', '3', '--accumulation-steps', '4']))
    assert (config.TRAIN.LR, config.DATA.NUM_DIVIDE, config.OUTPUT) == (5e-6, 2, 'runs/x')
    assert (config.MODEL.RESUME, config.MODEL.PRETRAINED, config.TEST.ONLY_TEST) == ('r.pth', 'w.pt', True)
    assert (config.TRAIN.BATCH_SIZE, config.TRAIN.ACCUMULATION_STEPS) == (3, 4)


@pytest.mark.parametrize('content, message', [
    ('TRAIN:\n  LEARNING_RATE: 1\n', 'LEARNING_RATE'),
    ('TRAIN:\n  EPOCHS: [1, 2\n', 'not valid YAML'),
    ('- a list\n', 'mapping'),
])
def test_bad_config_files_are_named(tmp_path, content, message):
    path = write(tmp_path / 'bad.yaml', content)
    with pytest.raises(ConfigError, match=message) as error:
        load_config(parse(['--config', path]))
    assert 'bad.yaml' in str(error.value)


def test_missing_config_file_and_bad_opts(tmp_path):
    with pytest.raises(ConfigError, match='nowhere.yaml'):
        load_config(parse(['--config', str(tmp_path / 'nowhere.yaml')]))
    with pytest.raises(ConfigError, match='TRAIN.NOT_A_KEY'):
        load_config(parse(['--opts', 'TRAIN.NOT_A_KEY', '1']))
    with pytest.raises(ConfigError, match='pairs'):
        load_config(parse(['--opts', 'TRAIN.LR']))


def test_valid_config_passes(valid):
    validate_config(valid)


@pytest.mark.parametrize('key, value, message', [
    ('DATA.NUM_DIVIDE', 3, 'DATA.NUM_DIVIDE = 3: must divide DATA.NUM_FRAMES = 16'),
    ('DATA.NUM_CLASSES', 11, 'DATA.NUM_CLASSES = 11: the label list .* has 7 rows'),
    ('AUG.COLOR_JITTER', 1.5, r'AUG.COLOR_JITTER = 1.5: must lie in \[0, 1\]'),
    ('MODEL.ERASE_THRESHOLD', -0.1, 'MODEL.ERASE_THRESHOLD'),
    ('DATA.INPUT_SIZE', 0, 'DATA.INPUT_SIZE = 0: must be positive'),
    ('TRAIN.BATCH_SIZE', -2, 'TRAIN.BATCH_SIZE = -2: must be positive'),
    ('TRAIN.OPT_LEVEL', 'O2', "TRAIN.OPT_LEVEL = 'O2'"),
    ('TRAIN.COMPILE_MODE', 'fast', "TRAIN.COMPILE_MODE = 'fast': must be one of"),
    ('LOSS.CONSISTENCY', 'mse', "LOSS.CONSISTENCY = 'mse'"),
    ('TEST.NUM_CROP', 2, 'TEST.NUM_CROP = 2: must be 1 or 3'),
    ('TEST.BEST_METRIC', 'F1', "TEST.BEST_METRIC = 'F1'"),
    ('AUG.FMIX_MASK', 'paper', "AUG.FMIX_MASK = 'paper': must be one of"),
    ('DATA.VAL_FRACTION', 1.0, 'DATA.VAL_FRACTION'),
    ('DATA.TRAIN_FILE', '/nowhere/train.txt', "DATA.TRAIN_FILE = '/nowhere/train.txt': file not found"),
    ('DATA.VAL_FILE', '', 'DATA.VAL_FILE'),
    ('DATA.LABEL_LIST', '/nowhere/labels.csv', 'DATA.LABEL_LIST'),
    ('MODEL.PRETRAINED', '/nowhere/ViT-B-16.pt', 'MODEL.PRETRAINED'),
])
def test_invalid_values_give_named_errors(valid, key, value, message):
    section, name = key.split('.')
    valid[section][name] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(valid)


def test_train_list_not_needed_for_only_test(valid):
    valid.DATA.TRAIN_FILE = ''
    valid.TEST.ONLY_TEST = True
    validate_config(valid)


@pytest.mark.parametrize('content, message', [
    ('name,id\n0,a\n', ':1: expected the header'),
    ('id,name\n0,a\nx,b\n', ':3: expected'),
    ('id,name\n0,a\n0,b\n', ':3: id 0 appears twice'),
    ('id,name\n0,a\n2,c\n', 'missing \\[1\\]'),
    ('id,name\n0,a,extra\n', ':2: expected'),
])
def test_label_csv_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / 'labels.csv'
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_label_csv(str(path))


def test_label_csv_in_any_row_order(tmp_path):
    path = tmp_path / 'labels.csv'
    path.write_text('id,name\n1,sad\n0,happy\n\n')
    assert read_label_csv(str(path)) == ['happy', 'sad']
