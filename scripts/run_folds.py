"""Train and evaluate every fold of a benchmark, one ``torchrun`` per fold, then write the results table.

For each ``configs/<dataset>/fold<k>.yaml`` the fold's output folder is ``<output-root>/<dataset>/fold<k>``.
A fold whose ``metrics.jsonl`` holds a ``final`` record is finished and skipped; any other fold is
started with ``TRAIN.AUTO_RESUME True``, so an interrupted one continues from its ``last.pth``.
Afterwards ``log/<DATASET>/results.md`` and ``results.csv`` are written (see ``scripts/summarize.py``).

Usage, from the repository root::

    python -m scripts.run_folds --dataset dfew --gpus 2 [--folds 1 3] [--opts KEY VALUE ...] [--dry-run]
"""
import argparse
import glob
import logging
import os
import re
import shutil
import subprocess
import sys

from scripts.summarize import dataset_title, write_results
from utils.checkpoint import LAST_CHECKPOINT
from utils.reporting import final_record

logger = logging.getLogger(__name__)

DATASETS = ('dfew', 'ferv39k', 'mafw')


def fold_configs(config_dir, folds=None):
    """``{fold number: config path}`` of the ``fold<k>.yaml`` files in ``config_dir``, optionally only ``folds``."""
    found = {}
    for path in glob.glob(os.path.join(config_dir, 'fold*.yaml')):
        match = re.fullmatch(r'fold(\d+)\.yaml', os.path.basename(path))
        if match:
            found[int(match.group(1))] = path
    if not found:
        raise FileNotFoundError(f'no fold<k>.yaml configs in {config_dir}')
    missing = sorted(set(folds or []) - set(found))
    if missing:
        raise ValueError(f'folds {missing} have no config in {config_dir} (found folds {sorted(found)})')
    return {fold: found[fold] for fold in sorted(found) if not folds or fold in folds}


def fold_status(output_dir):
    """``finished``, ``resume`` (a ``last.pth`` exists) or ``start``."""
    if final_record(output_dir) is not None:
        return 'finished'
    return 'resume' if os.path.isfile(os.path.join(output_dir, LAST_CHECKPOINT)) else 'start'


def torchrun_prefix():
    """The torchrun launcher: the ``torchrun`` executable, or the same module run by this Python."""
    return ['torchrun'] if shutil.which('torchrun') else [sys.executable, '-m', 'torch.distributed.run']


def fold_command(config_path, output_dir, gpus, opts):
    """The command line that trains and evaluates one fold."""
    return torchrun_prefix() + [
        '--standalone', f'--nproc_per_node={gpus}', 'main.py', '--config', config_path,
        '--output', output_dir, '--opts', 'TRAIN.AUTO_RESUME', 'True', *(opts or [])]


def run_fold(command, output_dir, dry_run):
    """Run (or, with ``dry_run``, only print) one fold's command; a failure raises naming the fold."""
    print(' '.join(command), flush=True)
    if dry_run:
        return
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise SystemExit(f'fold in {output_dir} failed with exit code {result.returncode}; see '
                         f'{os.path.join(output_dir, "log_rank0.txt")}. Run the same command again to resume.')


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m scripts.run_folds', description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', required=True, choices=DATASETS)
    parser.add_argument('--gpus', type=int, default=1, help='processes (GPUs) per fold')
    parser.add_argument('--folds', type=int, nargs='+', default=None, help='only these folds (default: all)')
    parser.add_argument('--config-dir', default='', help='folder of fold<k>.yaml (default: configs/<dataset>)')
    parser.add_argument('--output-root', default='output', help='fold k writes to <root>/<dataset>/fold<k>')
    parser.add_argument('--opts', nargs='+', default=None, help="settings for every fold: 'KEY VALUE' pairs")
    parser.add_argument('--dry-run', action='store_true', help='print the commands, run nothing')
    return parser.parse_args(argv)


def main(argv=None):
    """Command-line entry point; returns ``{fold: (status, command)}``."""
    args = parse_args(argv)
    configs = fold_configs(args.config_dir or os.path.join('configs', args.dataset), args.folds)
    plan, output_dirs = {}, []
    for fold, config_path in configs.items():
        output_dir = os.path.join(args.output_root, args.dataset, f'fold{fold}')
        status = fold_status(output_dir)
        command = fold_command(config_path, output_dir, args.gpus, args.opts)
        plan[fold], output_dirs = (status, command), output_dirs + [output_dir]
        print(f'# fold {fold}: {status}', flush=True)
        if status != 'finished':
            run_fold(command, output_dir, args.dry_run)
    if not args.dry_run:
        paths = write_results(output_dirs, os.path.join('log', dataset_title(args.dataset)))
        print('written:', *paths)
    return plan


if __name__ == '__main__':
    main()
