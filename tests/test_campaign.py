"""Benchmark campaigns: the synthetic folds, the campaign table (mean ± std over seeds against numpy),
dry runs, SLURM submission through submitit (with stand-in SLURM commands) and a small campaign through
submitit's local executor."""
import argparse
import json
import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import tiny_config
from datasets.annotations import read_annotation_list
from datasets.synthetic import ensure_synthetic_dataset, fold_clips, last_fold
from scripts import run_folds, summarize
from utils.config import ConfigError, add_config_arguments, load_config, validate_config
from utils.labels import REPOSITORY_ROOT
from utils.reporting import final_record

CLASS_NAMES = ['happiness', 'sadness', 'neutral', 'anger', 'surprise', 'disgust', 'fear']


# ----------------------------------------------------------------------------------------------------
# Synthetic folds
# ----------------------------------------------------------------------------------------------------
def synthetic_settings(fold):
    """DATA.SYNTHETIC with 3 training and 1 test clip per class (folds 0 to 3), for ``fold``."""
    synthetic = tiny_config().DATA.SYNTHETIC.clone()
    synthetic.defrost()
    synthetic.TRAIN_PER_CLASS, synthetic.TEST_PER_CLASS, synthetic.FOLD = 3, 1, fold
    return synthetic


def test_synthetic_folds_test_on_disjoint_balanced_blocks_of_the_same_clips():
    every_clip = {(folder, clip_id) for split in fold_clips(synthetic_settings(0)).values()
                  for folder, clip_id, _ in split}
    assert last_fold(synthetic_settings(0)) == 3
    test_sets = []
    for fold in range(4):
        clips = fold_clips(synthetic_settings(fold))
        train, test = ({(folder, clip_id) for folder, clip_id, _ in clips[split]} for split in ('train', 'test'))
        assert not train & test and train | test == every_clip
        assert sorted(label for _, _, label in clips['test']) == list(range(7))  # one clip per class
        test_sets.append(test)
    assert all(not a & b for i, a in enumerate(test_sets) for b in test_sets[i + 1:])
    # fold 0 is the generated split the demo has always used
    assert fold_clips(synthetic_settings(0))['test'] == [('test', i, i) for i in range(7)]


def test_a_new_fold_writes_its_lists_without_redrawing_the_clips(tmp_path):
    root = str(tmp_path / 'synthetic')

    def config(fold):
        lists = {0: ('train.txt', 'test.txt')}.get(fold, (f'train_fold{fold}.txt', f'test_fold{fold}.txt'))
        return tiny_config(DATA__ROOT=root, DATA__TRAIN_FILE=os.path.join(root, lists[0]),
                           DATA__VAL_FILE=os.path.join(root, lists[1]),
                           DATA__LABEL_LIST=os.path.join(root, 'labels.csv'), DATA__SYNTHETIC__GENERATE=True,
                           DATA__SYNTHETIC__TRAIN_PER_CLASS=2, DATA__SYNTHETIC__TEST_PER_CLASS=1,
                           DATA__SYNTHETIC__CLIP_LENGTH=8, DATA__SYNTHETIC__FRAME_SIZE=32,
                           DATA__SYNTHETIC__NOISE_FRAMES=2, DATA__SYNTHETIC__FOLD=fold)

    assert ensure_synthetic_dataset(config(0)) is True
    with open(os.path.join(root, 'synthetic.json')) as f:
        assert 'FOLD' not in json.load(f)  # the record of the clips, as before folds existed
    frame = os.path.join(root, 'frames', 'train', '00000', '000.jpg')
    stamp = os.path.getmtime(frame)
    assert ensure_synthetic_dataset(config(2)) is True
    assert ensure_synthetic_dataset(config(2)) is False
    assert os.path.getmtime(frame) == stamp  # the clips were not drawn again
    test = read_annotation_list(os.path.join(root, 'test_fold2.txt'), root, 7)
    assert [entry.path for entry in test] == [os.path.join(root, 'frames', 'train', f'{i:05d}') for i in range(7, 14)]
    with pytest.raises(ConfigError, match=r'DATA\.SYNTHETIC\.FOLD = 3'):
        ensure_synthetic_dataset(config(3))


@pytest.mark.parametrize('fold', [1, 2, 3])
def test_shipped_synthetic_folds_are_the_demo_on_other_lists(fold):
    parser = add_config_arguments(argparse.ArgumentParser())
    demo = load_config(parser.parse_args(['--config', os.path.join(REPOSITORY_ROOT, 'configs', 'demo.yaml')]))
    path = os.path.join(REPOSITORY_ROOT, 'configs', 'synthetic', f'fold{fold}.yaml')
    config = validate_config(load_config(parser.parse_args(['--config', path])), check_files=False)
    assert (config.DATA.SYNTHETIC.FOLD, config.OUTPUT) == (fold, f'output/synthetic/fold{fold}')
    assert (config.DATA.TRAIN_FILE, config.DATA.VAL_FILE) == (f'data/synthetic/train_fold{fold}.txt',
                                                              f'data/synthetic/test_fold{fold}.txt')
    config.defrost()
    config.merge_from_list(['DATA.SYNTHETIC.FOLD', 0, 'DATA.TRAIN_FILE', demo.DATA.TRAIN_FILE,
                            'DATA.VAL_FILE', demo.DATA.VAL_FILE, 'OUTPUT', demo.OUTPUT])
    assert config.dump() == demo.dump()  # nothing else differs from the demo


# ----------------------------------------------------------------------------------------------------
# The campaign table
# ----------------------------------------------------------------------------------------------------
def write_run(folder, uar, war, recall=None, dataset='dfew', finished=True):
    """A fake run folder: an eval record and (if finished) the final record with these figures; the
    release's UAR (mean over the shards) 0.3 below ``uar``."""
    os.makedirs(folder, exist_ok=True)
    report = {'UAR': uar, 'WAR': war, 'per_class_recall': recall or [uar] * 7, 'confusion_matrix': [],
              'UAR_release': uar - 0.3, 'per_class_recall_release': [uar - 0.3] * 7}
    heads = {'global': report, 'local': dict(report, UAR=0.0, WAR=0.0)}
    records = [{'type': 'eval', 'epoch': 0, 'split': 'test', 'heads': heads}]
    if finished:
        records.append({'type': 'final', 'dataset': dataset, 'class_names': CLASS_NAMES,
                        'best': {'epoch': 3, 'heads': heads}, 'last': {'epoch': 4, 'heads': heads}})
    with open(os.path.join(folder, 'metrics.jsonl'), 'w') as f:
        f.writelines(json.dumps(record) + '\n' for record in records)


def read_csv_rows(path):
    with open(path) as f:
        header, *rows = [line.split(',') for line in f.read().splitlines()]
    return {row[0]: dict(zip(header, row)) for row in rows}


# UAR (percent) of fold x seed; fold 2 seed 3 has not finished.
UAR = {1: {1: 63.1, 2: 64.4, 3: 62.2}, 2: {1: 60.0, 2: 61.5}}
WAR = {1: {1: 75.0, 2: 76.5, 3: 74.1}, 2: {1: 73.3, 2: 72.0}}


@pytest.fixture
def dfew_campaign(tmp_path):
    """Fake DFEW runs: folds 1 and 2 x seeds 1-3, fold 2 seed 3 unfinished; returns the campaign folder."""
    root = tmp_path / 'output' / 'dfew'
    for fold in (1, 2):
        for seed in (1, 2, 3):
            finished = seed in UAR[fold]
            write_run(root / f'fold{fold}' / f'seed{seed}', UAR[fold].get(seed, 0.0), WAR[fold].get(seed, 0.0),
                      finished=finished)
    return root


def test_campaign_table_means_and_stds_agree_with_numpy(dfew_campaign, tmp_path):
    markdown_path, csv_path = summarize.main([str(dfew_campaign), '--out-dir', str(tmp_path / 'log')])
    rows = read_csv_rows(csv_path)
    for metric, values in (('UAR', UAR), ('WAR', WAR)):
        for fold, by_seed in values.items():
            seeds = list(by_seed.values())
            assert float(rows[str(fold)][f'{metric}_mean']) == pytest.approx(np.mean(seeds), abs=0.005)
            assert float(rows[str(fold)][f'{metric}_std']) == pytest.approx(np.std(seeds, ddof=1), abs=0.005)
        fold_means = [np.mean(list(by_seed.values())) for by_seed in values.values()]
        per_seed_means = [np.mean([values[1][seed], values[2][seed]]) for seed in (1, 2)]  # seeds in both folds
        assert float(rows['Avg'][f'{metric}_mean']) == pytest.approx(np.mean(fold_means), abs=0.005)
        assert float(rows['Avg'][f'{metric}_std']) == pytest.approx(np.std(per_seed_means, ddof=1), abs=0.005)
    assert (rows['1']['runs'], rows['2']['runs'], rows['Avg']['runs'], rows['Avg']['planned_runs']) == \
        ('3', '2', '5', '6')
    published_uar = (63.29 + 63.01) / 2  # the official folds 1 and 2 only: like with like
    assert float(rows['Avg']['published_UAR']) == pytest.approx(published_uar, abs=0.005)
    assert float(rows['1']['delta_WAR']) == pytest.approx(np.mean(list(WAR[1].values())) - 76.21, abs=0.005)
    markdown = open(markdown_path).read()
    assert f'{np.mean(list(UAR[1].values())):.2f} ± {np.std(list(UAR[1].values()), ddof=1):.2f}' in markdown
    assert 'fold 2 seed 3' in markdown and str(dfew_campaign / 'fold2' / 'seed3') in markdown
    assert 'fold 1 seed' not in markdown.split('Missing runs')[1]  # only the unfinished run is named


def test_a_single_seed_shows_its_figures_without_a_spread(tmp_path):
    write_run(tmp_path / 'fold1', 41.0, 52.0, dataset='ferv39k')
    markdown_path, csv_path = summarize.write_campaign_results([summarize.run_from_folder(str(tmp_path / 'fold1'))],
                                                               str(tmp_path / 'log'))
    row = read_csv_rows(csv_path)['Avg']
    assert (row['UAR_mean'], row['UAR_std'], row['UAR_release_mean'], row['published_UAR']) == \
        ('41.00', '', '40.70', '41.84')
    assert row['delta_UAR_release'] == '-1.14'  # the release's UAR against the published one
    assert '| 1 | 1/1 | 41.00 | 40.70 | 52.00 | 41.84 | 52.37 | -1.14 | -0.37 |' in open(markdown_path).read()
    write_run(tmp_path / 'fold2', 1.0, 1.0, finished=False)
    with pytest.raises(ValueError, match='no finished run'):
        summarize.main([str(tmp_path / 'fold2')])


# ----------------------------------------------------------------------------------------------------
# run_folds: plans, dry runs and the SLURM queue check
# ----------------------------------------------------------------------------------------------------
def test_local_dry_run_skips_finished_runs_and_resumes_interrupted_ones(tmp_path, capsys):
    config_dir, output_root = tmp_path / 'configs', tmp_path / 'output'
    config_dir.mkdir()
    for fold in (1, 2):
        (config_dir / f'fold{fold}.yaml').write_text("BASE: ['base.yaml']\n")
    write_run(output_root / 'dfew' / 'fold1' / 'seed7', 1.0, 1.0)
    (output_root / 'dfew' / 'fold2' / 'seed7').mkdir(parents=True)
    (output_root / 'dfew' / 'fold2' / 'seed7' / 'last.pth').write_bytes(b'')
    statuses = run_folds.main(['--dataset', 'dfew', '--gpus', '2', '--config-dir', str(config_dir), '--seeds', '7',
                               '8', '--output-root', str(output_root), '--dry-run', '--opts', 'TRAIN.EPOCHS', '3'])
    assert {(run.fold, run.seed): status for run, status in statuses.items()} == \
        {('1', 7): 'finished', ('1', 8): 'start', ('2', 7): 'resume', ('2', 8): 'start'}
    commands = [line for line in capsys.readouterr().out.splitlines() if 'main.py' in line]
    assert len(commands) == 3  # the finished run is skipped
    for (fold, seed), command in zip([(1, 8), (2, 7), (2, 8)], commands):
        assert '--nproc_per_node=2 main.py' in command
        assert f'--config {config_dir / f"fold{fold}.yaml"}' in command
        assert f'--output {output_root / "dfew" / f"fold{fold}" / f"seed{seed}"}' in command
        assert command.endswith(f'--opts TRAIN.AUTO_RESUME True TRAIN.EPOCHS 3 SEED {seed}')


def test_slurm_dry_run_prints_every_job_of_a_dfew_campaign(tmp_path, capsys):
    output_root = tmp_path / 'output'
    run_folds.main(['--dataset', 'dfew', '--seeds', '1', '2', '--launcher', 'slurm', '--dry-run', '--gpus', '2',
                    '--nodes', '2', '--partition', 'gpu', '--timeout-min', '600', '--output-root', str(output_root)])
    jobs = [line for line in capsys.readouterr().out.splitlines() if line.startswith('slurm job')]
    assert len(jobs) == 10
    for index, job in enumerate(jobs):
        fold, seed = index // 2 + 1, index % 2 + 1
        resources = job.split('|')[0].split()
        for expected in ('nodes=2', 'gpus_per_node=2', 'tasks_per_node=2', 'partition=gpu', 'timeout_min=600'):
            assert expected in resources
        assert f'--config configs/dfew/fold{fold}.yaml' in job and job.endswith(f'SEED {seed}')
        assert f'--output {output_root / "dfew" / f"fold{fold}" / f"seed{seed}"}' in job
    assert not output_root.exists()  # a dry run submits and writes nothing


def fake_slurm_commands(folder, monkeypatch, running_jobs=()):
    """Stand-ins for SLURM's commands on PATH: ``sbatch`` keeps each job script in ``folder/jobs`` and
    answers with job ids 101, 102, ...; ``sacct`` reports ``running_jobs`` as RUNNING."""
    bin_dir, jobs = folder / 'bin', folder / 'jobs'
    bin_dir.mkdir(exist_ok=True)
    jobs.mkdir(exist_ok=True)
    counter = folder / 'last_job_id'
    states = ''.join(f'{job_id}|RUNNING|node1\\n' for job_id in running_jobs)
    commands = {
        'srun': 'exit 0',
        'sbatch': (f'id=$(( $(cat {counter} 2>/dev/null || echo 100) + 1 )); echo $id > {counter}; '
                   f'cp "$1" {jobs}/$id.sh; echo "Submitted batch job $id"'),
        'sacct': f'printf "JobID|State|NodeList\\n{states}"',
    }
    for name, body in commands.items():
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\n{body}\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    return jobs


def test_slurm_jobs_are_submitted_through_submitit_once(tmp_path, monkeypatch, capsys):
    output_root = tmp_path / 'output'
    campaign = ['--dataset', 'dfew', '--folds', '2', '--seeds', '1', '2', '--launcher', 'slurm', '--nodes', '2',
                '--gpus', '4', '--partition', 'gpu', '--timeout-min', '600', '--output-root', str(output_root)]
    jobs = fake_slurm_commands(tmp_path, monkeypatch)
    run_folds.main(campaign)
    assert capsys.readouterr().out.count('submitted fold 2 seed') == 2
    assert (output_root / 'dfew' / 'fold2' / 'seed2' / run_folds.JOB_ID_FILE).read_text().strip() == '102'
    script = (jobs / '101.sh').read_text()
    for line in ('--nodes=2', '--ntasks-per-node=4', '--gpus-per-node=4', '--partition=gpu', '--time=600'):
        assert f'#SBATCH {line}' in script
    assert '--signal=USR2@120' in script  # time to requeue before the limit
    # both jobs are still running: the same command submits nothing and writes no table yet
    fake_slurm_commands(tmp_path, monkeypatch, running_jobs=(101, 102))
    statuses = run_folds.main(campaign)
    assert list(statuses.values()) == ['queued (job 101)', 'queued (job 102)']
    printed = capsys.readouterr().out
    assert 'submitted fold' not in printed and 'written:' not in printed
    assert not (jobs / '103.sh').exists()


def test_a_slurm_task_gets_the_torch_distributed_environment():
    tasks = [SimpleNamespace(job_id='917', global_rank=rank, local_rank=rank % 4, num_tasks=8,
                             hostnames=['node-a', 'node-b']) for rank in (0, 5)]
    environments = [run_folds.distributed_environment(task) for task in tasks]
    assert [(env['RANK'], env['LOCAL_RANK'], env['WORLD_SIZE']) for env in environments] == [('0', '0', '8'),
                                                                                           ('5', '1', '8')]
    assert {env['MASTER_ADDR'] for env in environments} == {'node-a'}
    assert len({env['MASTER_PORT'] for env in environments}) == 1  # every task meets at the same port
    job = run_folds.TrainingJob(['--output', 'out'])
    assert job.checkpoint().function.argv == job.argv  # a requeued job runs (resumes) the same run


# ----------------------------------------------------------------------------------------------------
# A small campaign through submitit's local executor
# ----------------------------------------------------------------------------------------------------
def write_tiny_synthetic_folds(folder, data_root):
    """Fold configs of the tiny model on a tiny synthetic dataset: base.yaml and fold1-2.yaml."""
    base = tiny_config(DATA__ROOT=data_root, DATA__LABEL_LIST=os.path.join(data_root, 'labels.csv'),
                       DATA__DATASET='synthetic', DATA__SYNTHETIC__GENERATE=True,
                       DATA__SYNTHETIC__TRAIN_PER_CLASS=2, DATA__SYNTHETIC__TEST_PER_CLASS=1,
                       DATA__SYNTHETIC__CLIP_LENGTH=8, DATA__SYNTHETIC__FRAME_SIZE=32,
                       DATA__SYNTHETIC__NOISE_FRAMES=2, TRAIN__EPOCHS=1, TRAIN__WARMUP_EPOCHS=0,
                       TRAIN__BATCH_SIZE=7, AUG__MIXUP=0.0, TEST__BATCH_SIZE=7, PRINT_FREQ=100)
    os.makedirs(folder)
    with open(os.path.join(folder, 'base.yaml'), 'w') as f:
        f.write(base.dump())
    for fold in (1, 2):
        with open(os.path.join(folder, f'fold{fold}.yaml'), 'w') as f:
            f.write(f"BASE: ['base.yaml']\nDATA:\n  TRAIN_FILE: {data_root}/train_fold{fold}.txt\n"
                    f"  VAL_FILE: {data_root}/test_fold{fold}.txt\n  SYNTHETIC:\n    FOLD: {fold}\n")


@pytest.mark.slow
def test_a_campaign_through_submitits_local_executor(tmp_path, monkeypatch, capsys):
    config_dir, output_root, log_dir = tmp_path / 'configs', tmp_path / 'output', tmp_path / 'log'
    write_tiny_synthetic_folds(str(config_dir), str(tmp_path / 'data'))
    monkeypatch.chdir(REPOSITORY_ROOT)  # the jobs import main and scripts from the working directory
    # fold 1 has finished with known figures: its runs are skipped, and the table shows their spread
    for seed, (uar, war) in {1: (40.0, 50.0), 2: (44.0, 53.0)}.items():
        write_run(output_root / 'synthetic' / 'fold1' / f'seed{seed}', uar, war, dataset='synthetic')
    run_folds.main(['--dataset', 'synthetic', '--config-dir', str(config_dir), '--seeds', '1', '2',
                    '--launcher', 'submitit-local', '--output-root', str(output_root), '--out-dir', str(log_dir),
                    '--slurm-folder', str(tmp_path / 'jobs' / '%j')])
    printed = capsys.readouterr().out
    assert printed.count('submitted fold 2 seed') == 2 and 'submitted fold 1' not in printed
    finals = [final_record(str(output_root / 'synthetic' / 'fold2' / f'seed{seed}')) for seed in (1, 2)]
    assert all(final is not None for final in finals)
    rows = read_csv_rows(log_dir / 'results.csv')
    assert (rows['1']['UAR_mean'], rows['1']['UAR_std'], rows['1']['runs']) == \
        ('42.00', f'{np.std([40, 44], ddof=1):.2f}', '2')
    fold2_uar = [final['best']['heads']['global']['UAR'] for final in finals]
    assert float(rows['2']['UAR_mean']) == pytest.approx(np.mean(fold2_uar), abs=0.005)
    assert rows['Avg']['runs'] == '4' and 'Missing runs' not in open(log_dir / 'results.md').read()
    with open(output_root / 'synthetic' / 'fold2' / 'seed2' / 'config.yaml') as f:
        assert 'SEED: 2' in f.read()
