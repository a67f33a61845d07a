"""The fold runner (dry run), the results table from fold folders, and the shipped benchmark configs."""
import argparse
import csv
import json
import os

import pytest

from scripts import run_folds, summarize
from utils.config import add_config_arguments, load_config, validate_config
from utils.labels import REPOSITORY_ROOT, read_label_csv

CLASS_NAMES = ['happiness', 'sadness', 'neutral', 'anger', 'surprise', 'disgust', 'fear']


def heads_with(recall, uar, war, release=None):
    """Head reports; ``release`` = (per-class recall, UAR) as the release computes them, or None for a
    run written before UAR_release existed."""
    report = {'UAR': uar, 'WAR': war, 'per_class_recall': recall, 'confusion_matrix': []}
    if release is not None:
        report.update(per_class_recall_release=release[0], UAR_release=release[1])
    return {'global': report, 'local': dict(report, UAR=0.0, WAR=0.0)}


def write_run(folder, best, last=None, finished=True):
    """A fake output folder: an eval record and (if finished) the final record."""
    os.makedirs(folder, exist_ok=True)
    records = [{'type': 'eval', 'epoch': 0, 'split': 'test', 'heads': best}]
    if finished:
        records.append({'type': 'final', 'dataset': 'dfew', 'class_names': CLASS_NAMES,
                        'best': {'epoch': 3, 'heads': best}, 'last': {'epoch': 4, 'heads': last or best}})
    with open(os.path.join(folder, 'metrics.jsonl'), 'w') as f:
        f.writelines(json.dumps(record) + '\n' for record in records)


EXPECTED_TABLE = """\
| Fold | Runs | UAR | UAR_release | WAR | Published UAR | Published WAR | Δ UAR_release | Δ WAR |
|:-----|:-----:|:-----:|:-----:|:-----:|:-----:|:-----:|:-----:|:-----:|
| 1 | 1/1 | 63.33 | 63.00 | 75.50 | 63.29 | 76.21 | -0.29 | -0.71 |
| 2 | 1/1 | 47.14 | 47.50 | 60.25 | 63.01 | 73.22 | -15.51 | -12.97 |
| Avg | 2/2 | 55.24 | 55.25 | 67.88 | 63.15 | 74.72 | -7.90 | -6.84 |

Per-class recall, UAR and WAR in percent over the whole test list, means over seeds:

| Fold | Happy | Sad | Neutral | Angry | Surprise | Disgust | Fear | UAR | WAR |
|:-----|:-----:|:-----:|:-----:|:-----:|:-----:|:-----:|:-----:|:-----:|:-----:|
| 1 | 90.00 | 80.00 | 70.00 | 60.00 | 50.00 | - | 30.00 | 63.33 | 75.50 |
| 2 | 80.00 | 70.00 | 60.00 | 50.00 | 40.00 | 20.00 | 10.00 | 47.14 | 60.25 |
| Avg | 85.00 | 75.00 | 65.00 | 55.00 | 45.00 | 20.00 | 20.00 | 55.24 | 67.88 |

The same as the release computed it (the layout of the published per-class tables): each recall and UAR \
the mean over the test list's stride shards, means over seeds:

| Fold | Happy | Sad | Neutral | Angry | Surprise | Disgust | Fear | UAR_release | WAR |
|:-----|:-----:|:-----:|:-----:|:-----:|:-----:|:-----:|:-----:|:-----:|:-----:|
| 1 | 91.00 | 79.00 | 70.00 | 60.00 | 50.00 | - | 28.00 | 63.00 | 75.50 |
| 2 | 80.00 | 70.00 | 60.00 | 50.00 | 40.00 | 22.50 | 10.00 | 47.50 | 60.25 |
| Avg | 85.50 | 74.50 | 65.00 | 55.00 | 45.00 | 22.50 | 19.00 | 55.25 | 67.88 |
"""


def test_summarize_builds_the_published_table(tmp_path):
    write_run(tmp_path / 'fold1', heads_with([90., 80., 70., 60., 50., None, 30.], 63.333333, 75.5,
                                             release=([91., 79., 70., 60., 50., None, 28.], 63.0)))
    write_run(tmp_path / 'fold2', heads_with([80., 70., 60., 50., 40., 20., 10.], 47.142857, 60.25,
                                             release=([80., 70., 60., 50., 40., 22.5, 10.], 47.5)),
              last=heads_with([0.] * 7, 1.0, 2.0))
    out_dir = tmp_path / 'log'
    markdown_path, csv_path = summarize.main([str(tmp_path / 'fold1'), str(tmp_path / 'fold2'),
                                              '--out-dir', str(out_dir)])
    markdown = open(markdown_path).read()
    assert markdown.startswith('### DFEW\n') and markdown.endswith(EXPECTED_TABLE)
    average = list(csv.DictReader(open(csv_path)))[-1]
    assert (average['fold'], average['runs'], average['UAR_mean'], average['UAR_release_mean']) == \
        ('Avg', '2', '55.24', '55.25')
    assert (average['delta_UAR_release'], average['delta_WAR'], average['happiness'], average['fear_release']) == \
        ('-7.90', '-6.84', '85.00', '19.00')
    summarize.main([str(tmp_path / 'fold2'), '--which', 'last', '--out-dir', str(out_dir)])
    last_table = open(markdown_path).read()
    assert '| 2 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 | 0.00 | 1.00 | 2.00 |' in last_table
    # a run written before UAR_release existed: no release figure, and no difference claimed
    assert '| 2 | 1/1 | 1.00 | - | 2.00 | 63.01 | 73.22 | - | -71.22 |' in last_table


def test_summarize_names_an_unfinished_folder(tmp_path):
    write_run(tmp_path / 'fold7', heads_with([1.] * 7, 1., 1.), finished=False)
    with pytest.raises(ValueError, match='no finished run'):
        summarize.main([str(tmp_path / 'fold7'), '--out-dir', str(tmp_path / 'log')])
    write_run(tmp_path / 'fold6', heads_with([1.] * 7, 1., 1.))
    markdown_path, _ = summarize.main([str(tmp_path / 'fold6'), str(tmp_path / 'fold7'),
                                       '--out-dir', str(tmp_path / 'log')])
    assert f'fold 7 (`{tmp_path / "fold7"}`)' in open(markdown_path).read()


def test_run_folds_dry_run_prints_what_it_would_run(tmp_path, capsys):
    config_dir, output_root = tmp_path / 'configs', tmp_path / 'output'
    config_dir.mkdir()
    for fold in (1, 2, 3):
        (config_dir / f'fold{fold}.yaml').write_text("BASE: ['base.yaml']\n")
    write_run(output_root / 'dfew' / 'fold1', heads_with([1.] * 7, 1., 1.))
    (output_root / 'dfew' / 'fold2').mkdir(parents=True)
    (output_root / 'dfew' / 'fold2' / 'last.pth').write_bytes(b'')
    statuses = run_folds.main(['--dataset', 'dfew', '--gpus', '2', '--config-dir', str(config_dir),
                               '--output-root', str(output_root), '--dry-run', '--opts', 'TRAIN.EPOCHS', '3'])
    assert {run.fold: status for run, status in statuses.items()} == {'1': 'finished', '2': 'resume', '3': 'start'}
    assert {run.seed for run in statuses} == {None}  # without --seeds: the config's seed, in fold<k>
    printed = capsys.readouterr().out.splitlines()
    commands = [line for line in printed if not line.startswith('#')]
    assert len(commands) == 2  # the finished fold is skipped
    for fold, command in zip((2, 3), commands):
        assert '--nproc_per_node=2 main.py' in command
        assert f'--config {config_dir / f"fold{fold}.yaml"}' in command
        assert f'--output {output_root / "dfew" / f"fold{fold}"} ' in command
        assert command.endswith('--opts TRAIN.AUTO_RESUME True TRAIN.EPOCHS 3')
    assert not any(line.startswith('written:') for line in printed)  # a dry run writes no table


def test_run_folds_lists_the_shipped_dfew_folds(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPOSITORY_ROOT)  # the shipped configs, named as from the repository root
    run_folds.main(['--dataset', 'dfew', '--dry-run', '--output-root', str(tmp_path)])
    commands = [line for line in capsys.readouterr().out.splitlines() if 'main.py' in line]
    assert [command.split('--config ')[1].split()[0] for command in commands] == \
        [f'configs/dfew/fold{fold}.yaml' for fold in range(1, 6)]


@pytest.mark.parametrize('dataset, folds, num_classes', [('dfew', 5, 7), ('ferv39k', 1, 7), ('mafw', 5, 11)])
def test_shipped_configs_hold_the_published_settings(dataset, folds, num_classes):
    parser = add_config_arguments(argparse.ArgumentParser())
    for fold in range(1, folds + 1):
        path = os.path.join(REPOSITORY_ROOT, 'configs', dataset, f'fold{fold}.yaml')
        config = validate_config(load_config(parser.parse_args(['--config', path])), check_files=False)
        assert (config.DATA.DATASET, config.DATA.NUM_CLASSES) == (dataset, num_classes)
        assert len(read_label_csv(config.DATA.LABEL_LIST)) == num_classes
        assert (config.MODEL.ARCH, config.DATA.NUM_FRAMES, config.DATA.NUM_DIVIDE) == ('ViT-B/16', 16, 4)
        assert (config.TRAIN.LR, config.TRAIN.EPOCHS, config.TRAIN.OPT_LEVEL) == (2e-6, 50, 'O1')
        assert config.TRAIN.BATCH_SIZE * config.TRAIN.ACCUMULATION_STEPS == 16  # x 2 GPUs = 32 per update
        assert config.OUTPUT == f'output/{dataset}/fold{fold}'
        for path in (config.DATA.TRAIN_FILE, config.DATA.VAL_FILE, config.DATA.ROOT):
            assert path.startswith(f'data/{dataset}/')  # placeholders inside the repository
