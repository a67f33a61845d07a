"""User errors read as errors: one line naming the key, file or line, exit status 2, no traceback."""
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import main as main_module
from conftest import tiny_config
from datasets.decoding import VideoReadError
from scripts import eval as eval_script
from utils.errors import USER_ERROR_EXIT_STATUS, UserError, run_command, user_error_message
from utils.labels import REPOSITORY_ROOT
from utils.logger import LOG_FILE


def run_tool(*command):
    """Run ``python <command>`` from the repository root: (exit status, stderr lines)."""
    result = subprocess.run([sys.executable, *command], cwd=REPOSITORY_ROOT, capture_output=True, text=True,
                            timeout=300)
    return result.returncode, result.stderr.strip().splitlines()


def write_config(folder, **overrides):
    path = os.path.join(folder, 'run.yaml')
    with open(path, 'w') as f:
        f.write(tiny_config(OUTPUT=os.path.join(folder, 'out'), **overrides).dump())
    return path


def assert_one_line_error(status, stderr, *named):
    assert status == USER_ERROR_EXIT_STATUS, stderr
    assert len(stderr) == 1 and stderr[0].startswith('error: '), stderr
    assert all(text in stderr[0] for text in named), stderr


def run_in_process(main_function, argv, capsys):
    """``run_command(main_function, argv)`` in this process: (exit status, stderr lines)."""
    with pytest.raises(SystemExit) as exit_info:
        run_command(main_function, argv)
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.slow
def test_a_bad_config_key_or_value_is_one_line_naming_the_key(tmp_path, capsys):
    config = write_config(str(tmp_path))
    # the real command line once, in its own process: nothing but the one line reaches stderr
    assert_one_line_error(*run_tool('main.py', '--config', config, '--opts', 'TRAIN.NO_SUCH_KEY', '1'),
                          'TRAIN.NO_SUCH_KEY')
    assert_one_line_error(*run_in_process(main_module.main, ['--config', config, '--opts', 'TRAIN.OPT_LEVEL', 'O7'],
                                          capsys), 'TRAIN.OPT_LEVEL', 'O7')


def test_a_malformed_list_line_is_one_line_naming_the_file_and_line_and_the_log_keeps_the_traceback(tmp_path,
                                                                                                    capsys):
    train_list = tmp_path / 'train.txt'
    train_list.write_text('clips/a 16 0\nclips/b sixteen 1\n')
    config = write_config(str(tmp_path), DATA__TRAIN_FILE=str(train_list), DATA__VAL_FILE=str(train_list))
    assert_one_line_error(*run_in_process(main_module.main, ['--config', config], capsys), f'{train_list}:2')
    log = (tmp_path / 'out' / LOG_FILE).read_text()
    assert 'Traceback' in log and f'{train_list}:2' in log


def test_an_unreadable_checkpoint_is_one_line_naming_the_file(tmp_path, capsys):
    checkpoint = tmp_path / 'best.pth'
    checkpoint.write_bytes(b'not a checkpoint')
    assert_one_line_error(*run_in_process(eval_script.main, ['--checkpoint', str(checkpoint)], capsys),
                          str(checkpoint))
    assert_one_line_error(*run_in_process(eval_script.main, ['--checkpoint', str(tmp_path / 'none.pth')], capsys),
                          'none.pth')


def test_run_command_exits_with_2_for_user_errors_and_lets_bugs_through(capsys):
    def bad_input(argv):
        raise UserError('DATA.ROOT = /nowhere: no such folder')

    def bug(argv):
        raise KeyError('a bug')

    with pytest.raises(SystemExit) as exit_info:
        run_command(bad_input)
    assert exit_info.value.code == USER_ERROR_EXIT_STATUS
    assert capsys.readouterr().err == 'error: DATA.ROOT = /nowhere: no such folder\n'
    with pytest.raises(KeyError, match='a bug'):
        run_command(bug)


class UnreadableVideos(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise VideoReadError(f'clips/{index}.mp4 (list.txt:{index + 1}): cannot open the video')


def test_an_error_raised_in_a_data_loader_worker_keeps_its_one_line_message():
    loader = DataLoader(UnreadableVideos(), num_workers=1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(VideoReadError) as error:
        next(iter(loader))
    assert 'Traceback' in str(error.value)  # what torch makes of it in the main process
    assert user_error_message(error.value) == 'clips/0.mp4 (list.txt:1): cannot open the video'
