"""main.py end to end on the synthetic dataset: outputs, resume, torchrun DDP, and scripts/eval.py."""
import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import main as main_module
from conftest import tiny_config, write_release_checkpoint
from datasets.synthetic import ensure_synthetic_dataset
from scripts import eval as eval_script
from utils.labels import REPOSITORY_ROOT
from utils.checkpoint import load_checkpoint
from utils.config import get_default_config, merge_config_file
from utils.reporting import read_records


@pytest.fixture(scope='module')
def dataset_root(tmp_path_factory):
    """A tiny synthetic dataset: 7 classes, 3 training clips and 1 test clip each (7 tests: odd)."""
    root = str(tmp_path_factory.mktemp('synthetic'))
    ensure_synthetic_dataset(run_config(root, ''))
    return root


def run_config(root, output, **overrides):
    """The tiny model on the synthetic dataset in ``root``; ``overrides`` as in ``tiny_config``."""
    settings = dict(
        DATA__ROOT=root, DATA__TRAIN_FILE=os.path.join(root, 'train.txt'),
        DATA__VAL_FILE=os.path.join(root, 'test.txt'), DATA__LABEL_LIST=os.path.join(root, 'labels.csv'),
        DATA__DATASET='synthetic', DATA__SYNTHETIC__GENERATE=True, DATA__SYNTHETIC__TRAIN_PER_CLASS=3,
        DATA__SYNTHETIC__TEST_PER_CLASS=1, DATA__SYNTHETIC__CLIP_LENGTH=8, DATA__SYNTHETIC__FRAME_SIZE=32,
        DATA__SYNTHETIC__NOISE_FRAMES=2,
        TRAIN__EPOCHS=3, TRAIN__WARMUP_EPOCHS=1, TRAIN__LR=2e-3, TRAIN__CONSISTENCY_EPOCHS=3,
        TRAIN__BATCH_SIZE=4, TRAIN__ACCUMULATION_STEPS=2, AUG__MIXUP=0.0, PRINT_FREQ=2, OUTPUT=output)
    return tiny_config(**{**settings, **overrides})


def write_config(config, folder):
    path = os.path.join(folder, 'run.yaml')
    with open(path, 'w') as f:
        f.write(config.dump())
    return path


def records(output, record_type):
    return [r for r in read_records(os.path.join(output, 'metrics.jsonl')) if r['type'] == record_type]


def model_tensors(path):
    return torch.load(path, map_location='cpu', weights_only=True)['model']


@pytest.fixture(scope='module')
def trained_run(dataset_root, tmp_path_factory):
    """One single-process CPU run with a validation split; returns its output folder."""
    folder = str(tmp_path_factory.mktemp('run'))
    output = os.path.join(folder, 'out')
    config = run_config(dataset_root, output, DATA__VAL_FRACTION=0.34, TRAIN__EPOCHS=4,
                        TRAIN__CONSISTENCY_EPOCHS=4)
    main_module.main(['--config', write_config(config, folder)])
    return output


@pytest.mark.slow
def test_main_trains_and_writes_every_output(trained_run):
    expected_files = ['config.yaml', 'log_rank0.txt', 'metrics.jsonl', 'last.pth', 'best.pth',
                      'confusion_matrix.png', 'best_test.recall.png',
                      'best_test.confusion_global.png', 'best_test.confusion_fused.png']
    assert all(os.path.isfile(os.path.join(trained_run, name)) for name in expected_files)
    assert any(name.startswith('events.out.tfevents') for name in os.listdir(trained_run))
    losses = [record['losses']['loss_global'] for record in records(trained_run, 'train')]
    assert len(losses) == 4 and losses[-1] < losses[0]
    evaluations = records(trained_run, 'eval')
    assert [(r['epoch'], r['split']) for r in evaluations] == [(e, s) for e in range(4) for s in ('test', 'val')]
    assert {r['num_videos'] for r in evaluations if r['split'] == 'test'} == {7}
    final, = records(trained_run, 'final')
    assert final['best']['selection']['split'] == 'val' and final['last']['epoch'] == 3
    best_epoch = final['best']['epoch']
    best_val = [r for r in evaluations if r['split'] == 'val' and r['epoch'] == best_epoch][0]
    assert final['best']['selection']['value'] == max(r['heads']['global']['WAR'] for r in evaluations
                                                      if r['split'] == 'val') == best_val['heads']['global']['WAR']
    log = open(os.path.join(trained_run, 'log_rank0.txt')).read()
    assert 'Train: [3/4][3/3] lr' in log and 'time/step' in log and 'eta' in log and 'mem' in log
    for head in ('global', 'local', 'fused'):
        report = final['best']['heads'][head]
        assert f'RESULT head={head} UAR={report["UAR"]:.2f} WAR={report["WAR"]:.2f}' in log
    assert f'epoch={best_epoch}' in log


def read_predictions(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_eval_script_reproduces_the_runs_figures(trained_run, tmp_path, capsys):
    json_path, predictions_path = str(tmp_path / 'eval.json'), str(tmp_path / 'predictions.csv')
    evaluation = eval_script.main(['--checkpoint', os.path.join(trained_run, 'best.pth'), '--json', json_path,
                                   '--predictions', predictions_path])
    result = json.load(open(json_path))
    final, = records(trained_run, 'final')
    assert result['heads'] == final['best']['heads'] and result['num_videos'] == 7
    global_head = result['heads']['global']
    printed = capsys.readouterr().out
    assert (f'RESULT head=global UAR={global_head["UAR"]:.2f} WAR={global_head["WAR"]:.2f} '
            f'UAR_release={global_head["UAR_release"]:.2f}') in printed
    # the per-video file: list order, and the same confusion matrix as the figures
    rows = read_predictions(predictions_path)
    assert [int(row['index']) for row in rows] == list(range(7))
    for head in ('global', 'local', 'fused'):
        matrix = torch.zeros(7, 7, dtype=torch.long)
        for row in rows:
            matrix[int(row['label']), int(row[f'pred_{head}'])] += 1
        assert matrix.tolist() == result['heads'][head]['confusion_matrix'], head
    for row in rows:
        probabilities = [float(value) for name, value in row.items() if name.startswith('prob_')]
        assert len(probabilities) == 7 and sum(probabilities) == pytest.approx(1, abs=1e-5)
        assert probabilities.index(max(probabilities)) == int(row['pred_global'])
    # the training run wrote the same file for its best epoch
    assert open(os.path.join(trained_run, 'best_test.predictions.csv')).read() == open(predictions_path).read()
    shuffled = eval_script.main(['--checkpoint', os.path.join(trained_run, 'best.pth'), '--json', json_path,
                                 '--opts', 'TEST.SHUFFLE_FRAMES', 'True'])
    assert json.load(open(json_path))['frames_shuffled'] is True
    pictures = {'eval.recall.png', 'eval.confusion_global.png', 'eval.confusion_local.png', 'eval.confusion_fused.png'}
    assert pictures <= set(os.listdir(tmp_path))
    assert not torch.allclose(shuffled.scores['global'], evaluation.scores['global'])


@pytest.mark.slow
def test_the_release_checkpoint_files_evaluate_and_resume(trained_run, tmp_path, caplog):
    ours = load_checkpoint(os.path.join(trained_run, 'best.pth'))
    config_path = os.path.join(trained_run, 'config.yaml')
    release = str(tmp_path / 'release_best.pth')
    write_release_checkpoint(release, ours['model'], ours['epoch'] - 1,
                             merge_config_file(get_default_config(), config_path))
    final, = records(trained_run, 'final')

    evaluation = eval_script.main(['--checkpoint', release, '--json', str(tmp_path / 'eval.json')])
    assert evaluation.heads == final['best']['heads']
    only_test = main_module.main(['--config', config_path, '--output', str(tmp_path / 'only_test'),
                                  '--resume', release, '--only_test'])
    assert only_test['evaluation'].heads == final['best']['heads']

    continued = str(tmp_path / 'continued')
    with caplog.at_level('WARNING'):
        main_module.main(['--config', config_path, '--output', continued, '--resume', release,
                          '--opts', 'TRAIN.EPOCHS', str(ours['epoch'] + 1)])
    assert [record['epoch'] for record in records(continued, 'train')] == [ours['epoch']]  # the next epoch
    assert 'official release file' in caplog.text and 'not restored' in caplog.text


def run_main_process(config_path, output, *opts, kill_at=None):
    """``python main.py`` in a new process; with ``kill_at``, SIGKILL it once a printed line contains
    that text. Returns (return code, printed lines)."""
    command = [sys.executable, 'main.py', '--config', config_path, '--output', output]
    command += ['--opts', *opts] if opts else []
    process = subprocess.Popen(command, cwd=REPOSITORY_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if kill_at is not None and kill_at in line:
            process.send_signal(signal.SIGKILL)  # no clean-up of any kind, as when a job is killed
            break
    process.stdout.close()
    return process.wait(timeout=300), lines


def result_lines_of(lines):
    return [line.split('] INFO ')[-1] for line in lines if 'RESULT head=' in line]


@pytest.mark.slow
def test_a_killed_run_resumes_in_a_new_process_to_the_same_result(dataset_root, tmp_path):
    # Workers, mixup, FMix, colour jitter and two accumulation steps make every random stream matter.
    config = run_config(dataset_root, '', AUG__MIXUP=0.8, AUG__COLOR_JITTER=0.8, DATA__NUM_WORKERS=2,
                        TRAIN__EPOCHS=3, PRINT_FREQ=1, TEST__REPORT_SHUFFLED=True)
    config_path = write_config(config, str(tmp_path))
    straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
    main_module.main(['--config', config_path, '--output', straight])  # the uninterrupted run, in this process
    straight_lines = open(os.path.join(straight, 'log_rank0.txt')).readlines()

    status, _ = run_main_process(config_path, resumed, kill_at='Train: [1/3][1/')
    assert status == -signal.SIGKILL and records(resumed, 'final') == []
    status, resumed_lines = run_main_process(config_path, resumed, 'TRAIN.AUTO_RESUME', 'True')
    assert status == 0, ''.join(resumed_lines[-30:])
    assert any('auto-resume: found' in line for line in resumed_lines)

    resumed_tensors = model_tensors(os.path.join(resumed, 'last.pth'))
    for name, tensor in model_tensors(os.path.join(straight, 'last.pth')).items():
        assert torch.equal(tensor, resumed_tensors[name]), name
    assert result_lines_of(resumed_lines) == result_lines_of(straight_lines) != []
    # metrics.jsonl reads like the uninterrupted run's: each epoch once, the same figures
    for kind in ('train', 'eval', 'final'):
        assert records(resumed, kind) == records(straight, kind), kind
