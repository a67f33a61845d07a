"""Run a benchmark campaign: every fold x seed of a dataset, on this machine or on a SLURM cluster.

Each run trains and evaluates one fold with one seed in its own output folder:
``<output-root>/<dataset>/fold<k>/seed<s>`` with ``--seeds``, ``<output-root>/<dataset>/fold<k>`` without
(the config's ``SEED``). A run whose ``metrics.jsonl`` holds a ``final`` record is finished and skipped;
every other run is started with ``TRAIN.AUTO_RESUME True``, so an interrupted one continues from its
``last.pth``. Launchers:

- ``local`` (default): one ``torchrun --nproc_per_node <gpus>`` after another on this machine.
- ``slurm``: one job per run through submitit, ``--nodes`` x ``--gpus`` tasks (one per GPU); every task
  runs ``main.main`` under torch.distributed set up from the environment SLURM gives it (NCCL across
  nodes). A job that reaches its time limit or is preempted is requeued and resumes. A run whose job
  is still pending or running is not submitted again.
- ``submitit-local``: the same jobs as processes on this machine (submitit's local executor), to try
  the SLURM path without a cluster.

Then ``log/<DATASET>/results.md``, ``results.csv`` and ``results.png`` are written
(``scripts/summarize.py``); with ``--launcher slurm`` only once nothing is left to wait for (``--wait``
waits for the jobs).

Usage, from the repository root::

    python -m scripts.run_folds --dataset dfew --gpus 2 --seeds 1 2 3 --opts MODEL.PRETRAINED ViT-B-16.pt
    python -m scripts.run_folds --dataset dfew --gpus 2 --seeds 1 2 --launcher slurm --partition gpu [--dry-run]
    python -m scripts.run_folds --dataset synthetic --folds 1 2 --seeds 1 2 --opts TRAIN.EPOCHS 1
"""
import argparse
import glob
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import zlib
from typing import NamedTuple

import submitit

import main as training
from scripts.summarize import RESULTS_PICTURE, Run, run_name, write_campaign_results
from utils.checkpoint import LAST_CHECKPOINT
from utils.errors import InputFileError, UserError, run_command
from utils.reporting import final_record

logger = logging.getLogger(__name__)

DATASETS = ('dfew', 'ferv39k', 'mafw', 'mafw_compound', 'synthetic')
LAUNCHERS = ('local', 'slurm', 'submitit-local')
# submitit's cluster of each launcher that submits jobs.
SUBMITIT_CLUSTERS = {'slurm': 'slurm', 'submitit-local': 'local'}
# Written into a run's folder at submission: the id of the SLURM job that trains it.
JOB_ID_FILE = 'slurm_job_id'
# SLURM states of a job that will still run: its run is not submitted again. UNKNOWN is left out, so that
# a job id SLURM has forgotten never blocks a run for good.
ACTIVE_JOB_STATES = ('PENDING', 'CONFIGURING', 'RUNNING', 'COMPLETING', 'REQUEUED', 'RESIZING', 'SUSPENDED')
# SLURM signals a job this long before its time limit, leaving time to requeue it.
SIGNAL_DELAY_S = 120
# A job's rendezvous port: MASTER_PORT_BASE plus a number derived from the job id, the same in all its tasks
# and (mostly) different for two jobs sharing a node.
MASTER_PORT_BASE, MASTER_PORT_SPAN = 20000, 20000


class PlannedRun(NamedTuple):
    """A run of the campaign and the config of its fold."""
    run: Run
    config_path: str


def fold_configs(config_dir, folds=None):
    """``{fold number: config path}`` of the ``fold<k>.yaml`` files in ``config_dir``, optionally only ``folds``."""
    found = {}
    for path in glob.glob(os.path.join(config_dir, 'fold*.yaml')):
        match = re.fullmatch(r'fold(\d+)\.yaml', os.path.basename(path))
        if match:
            found[int(match.group(1))] = path
    if not found:
        raise InputFileError(f'no fold<k>.yaml configs in {config_dir}')
    missing = sorted(set(folds or []) - set(found))
    if missing:
        raise UserError(f'folds {missing} have no config in {config_dir} (found folds {sorted(found)})')
    return {fold: found[fold] for fold in sorted(found) if not folds or fold in folds}


def plan_campaign(configs, seeds, output_root, dataset):
    """Every fold x seed, fold by fold; ``seeds`` None: one run per fold, in ``fold<k>``, with the config's seed."""
    planned = []
    for fold, config_path in configs.items():
        fold_dir = os.path.join(output_root, dataset, f'fold{fold}')
        for seed in seeds or [None]:
            output_dir = fold_dir if seed is None else os.path.join(fold_dir, f'seed{seed}')
            planned.append(PlannedRun(Run(str(fold), seed, output_dir), config_path))
    return planned


def run_status(output_dir):
    """``finished``, ``resume`` (a ``last.pth`` exists) or ``start``."""
    if final_record(output_dir) is not None:
        return 'finished'
    return 'resume' if os.path.isfile(os.path.join(output_dir, LAST_CHECKPOINT)) else 'start'


def main_argv(planned, opts):
    """The arguments of ``main.main`` for a run: config, folder, auto-resume, the campaign's settings, seed."""
    seed = [] if planned.run.seed is None else ['SEED', str(planned.run.seed)]
    return ['--config', planned.config_path, '--output', planned.run.output_dir,
            '--opts', 'TRAIN.AUTO_RESUME', 'True', *(opts or []), *seed]


# ----------------------------------------------------------------------------------------------------
# Local launcher: torchrun, one run after another
# ----------------------------------------------------------------------------------------------------
def torchrun_prefix():
    """The torchrun launcher: the ``torchrun`` executable, or the same module run by this Python."""
    return ['torchrun'] if shutil.which('torchrun') else [sys.executable, '-m', 'torch.distributed.run']


def local_command(argv, gpus):
    """The command line that trains and evaluates one run on this machine with ``gpus`` processes."""
    return torchrun_prefix() + ['--standalone', f'--nproc_per_node={gpus}', 'main.py', *argv]


def run_local(command, output_dir):
    """Run one run's command and wait for it; a failure raises naming the run's log."""
    process = subprocess.Popen(command)
    try:
        return_code = process.wait()
    except BaseException:  # Ctrl-C or SIGTERM: stop the run's processes too, not only this one
        process.terminate()
        process.wait()
        raise
    if return_code != 0:
        raise SystemExit(f'the run in {output_dir} failed with exit code {return_code}; see '
                         f'{os.path.join(output_dir, "log_rank0.txt")}. Run the same command again to resume.')


def run_locally(pending, args):
    """Run (``--dry-run``: print) each pending run's torchrun command, one after another."""
    for planned in pending:
        command = local_command(main_argv(planned, args.opts), args.gpus)
        print(' '.join(command), flush=True)
        if not args.dry_run:
            run_local(command, planned.run.output_dir)


# ----------------------------------------------------------------------------------------------------
# SLURM launcher: one submitit job per run
# ----------------------------------------------------------------------------------------------------
def distributed_environment(job_environment):
    """The torch.distributed variables of a submitit task (see ``utils/distributed.py``): global rank,
    world size and local rank from SLURM, the job's first node as the rendezvous host."""
    port = MASTER_PORT_BASE + zlib.crc32(job_environment.job_id.encode()) % MASTER_PORT_SPAN
    return {'RANK': str(job_environment.global_rank), 'WORLD_SIZE': str(job_environment.num_tasks),
            'LOCAL_RANK': str(job_environment.local_rank), 'MASTER_ADDR': job_environment.hostnames[0],
            'MASTER_PORT': str(port)}


class TrainingJob:
    """One run as a submitit job: every task runs ``main.main(argv)`` as one process of torch.distributed.

    Args:
        argv: the arguments of ``main.main`` (``main_argv``); they hold ``TRAIN.AUTO_RESUME True``.
    """

    def __init__(self, argv):
        self.argv = list(argv)

    def __call__(self):
        """Set up torch.distributed from the job's environment and train; returns the output folder."""
        os.environ.update(distributed_environment(submitit.JobEnvironment()))
        training.main(self.argv)
        return self.argv[self.argv.index('--output') + 1]

    def checkpoint(self):
        """Called by submitit at the time limit or on preemption: requeue the same run, which continues
        from its ``last.pth``."""
        return submitit.helpers.DelayedSubmission(TrainingJob(self.argv))


def job_name(dataset, run):
    """The job's name in the queue: ``dkclip-dfew-fold1-seed2``."""
    return f'dkclip-{dataset}-fold{run.fold}' + ('' if run.seed is None else f'-seed{run.seed}')


def job_parameters(args, run):
    """submitit's parameters of a run's job: one task per GPU on each of ``--nodes`` nodes."""
    return {'name': job_name(args.dataset, run), 'nodes': args.nodes, 'tasks_per_node': args.gpus,
            'gpus_per_node': args.gpus, 'cpus_per_task': args.cpus_per_task, 'timeout_min': args.timeout_min,
            'slurm_partition': args.partition, 'slurm_account': args.account,
            'slurm_signal_delay_s': SIGNAL_DELAY_S}


def describe_job(parameters, argv):
    """One line for ``--dry-run``: the job's name and resources, and the ``main.py`` arguments of each task."""
    resources = ' '.join(f'{key.removeprefix("slurm_")}={"-" if value is None else value}'
                         for key, value in parameters.items() if key != 'name')
    return f'slurm job {parameters["name"]}: {resources} | main.py {" ".join(argv)}'


def slurm_folder(args):
    """submitit's folder of job scripts and logs (``%j``: the job id)."""
    return args.slurm_folder or os.path.join(args.output_root, args.dataset, 'slurm', '%j')


def queued_job(output_dir, folder):
    """The SLURM job of this run (its id recorded at submission) if it is still pending or running, else None."""
    path = os.path.join(output_dir, JOB_ID_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        job = submitit.SlurmJob(folder=folder, job_id=f.read().strip())
    return job if job.state in ACTIVE_JOB_STATES else None


def submit_jobs(pending, args):
    """Submit one job per pending run (``--dry-run``: print them); returns ``{run: job}``."""
    if args.dry_run:
        for planned in pending:
            print(describe_job(job_parameters(args, planned.run), main_argv(planned, args.opts)), flush=True)
        return {}
    executor = submitit.AutoExecutor(folder=slurm_folder(args), cluster=SUBMITIT_CLUSTERS[args.launcher])
    jobs = {}
    for planned in pending:
        executor.update_parameters(**job_parameters(args, planned.run))
        job = executor.submit(TrainingJob(main_argv(planned, args.opts)))
        os.makedirs(planned.run.output_dir, exist_ok=True)
        with open(os.path.join(planned.run.output_dir, JOB_ID_FILE), 'w', encoding='utf-8') as f:
            f.write(f'{job.job_id}\n')
        print(f'submitted {run_name(planned.run)}: job {job.job_id}, log {job.paths.stdout}', flush=True)
        jobs[planned.run] = job
    return jobs


def wait_for_jobs(jobs):
    """Wait until every job has ended; returns the runs whose job failed (each failure is printed)."""
    failed = []
    for run, job in jobs.items():
        try:
            job.results()
        except submitit.core.utils.UncompletedJobError as error:  # the other jobs' results still count
            print(f'{run_name(run)}: job {job.job_id} failed: {error}', flush=True)
            failed.append(run)
    return failed


# ----------------------------------------------------------------------------------------------------
# The campaign
# ----------------------------------------------------------------------------------------------------
def campaign_status(planned, args):
    """``{run: status}`` (finished, queued, resume or start) and ``{run: job}`` of the queued runs, those
    a SLURM job submitted earlier will still run."""
    statuses, queued = {}, {}
    for item in planned:
        statuses[item.run] = run_status(item.run.output_dir)
        job = queued_job(item.run.output_dir, slurm_folder(args)) if (
            args.launcher == 'slurm' and statuses[item.run] != 'finished') else None
        if job is not None:
            statuses[item.run], queued[item.run] = f'queued (job {job.job_id})', job
    return statuses, queued


def launch(pending, queued, args):
    """Run or submit the pending runs (with ``--wait``, also wait for the ``queued`` jobs); returns the
    runs that failed (the local launcher stops at the first failure)."""
    if args.launcher == 'local':
        run_locally(pending, args)
        return []
    jobs = {**queued, **submit_jobs(pending, args)}
    if args.launcher == 'submitit-local' or (args.wait and not args.dry_run):  # local jobs end with this process
        return wait_for_jobs(jobs)
    return []


def write_table(planned, args):
    """Write the campaign's results table and print it."""
    markdown_path, csv_path = write_campaign_results([item.run for item in planned], args.out_dir or None,
                                                     args.which, args.head)
    with open(markdown_path, encoding='utf-8') as f:
        print(f.read())
    print('written:', markdown_path, csv_path, os.path.join(os.path.dirname(markdown_path), RESULTS_PICTURE),
          flush=True)


def main(argv=None):
    """Command-line entry point; returns ``{run: status before launching}``."""
    args = parse_args(argv)
    configs = fold_configs(args.config_dir or os.path.join('configs', args.dataset), args.folds)
    planned = plan_campaign(configs, args.seeds, args.output_root, args.dataset)
    statuses, queued = campaign_status(planned, args)
    for item in planned:
        print(f'# {run_name(item.run)}: {statuses[item.run]}', flush=True)
    pending = [item for item in planned if statuses[item.run] in ('start', 'resume')]
    failed = launch(pending, queued, args)
    if args.dry_run:
        return statuses
    if args.launcher == 'slurm' and not args.wait and any(status != 'finished' for status in statuses.values()):
        print('# the table is written once every run has finished: run the same command again then '
              '(finished runs are skipped, queued ones are not submitted again), or add --wait', flush=True)
        return statuses
    write_table(planned, args)
    if failed:
        raise SystemExit(f'{len(failed)} run(s) failed: ' + ', '.join(run_name(run) for run in failed))
    return statuses


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m scripts.run_folds', description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', required=True, choices=DATASETS)
    parser.add_argument('--folds', type=int, nargs='+', default=None, help='only these folds (default: all)')
    parser.add_argument('--seeds', type=int, nargs='+', default=None,
                        help="one run per fold and seed, in fold<k>/seed<s> (default: the config's SEED, in fold<k>)")
    parser.add_argument('--config-dir', default='', help='folder of fold<k>.yaml (default: configs/<dataset>)')
    parser.add_argument('--output-root', default='output', help='runs write to <root>/<dataset>/fold<k>[/seed<s>]')
    parser.add_argument('--opts', nargs='+', default=None, help="settings for every run: 'KEY VALUE' pairs")
    parser.add_argument('--gpus', type=int, default=1, help='processes (GPUs) per run, per node under SLURM')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='local')
    parser.add_argument('--dry-run', action='store_true', help='print the commands or jobs, run nothing')
    slurm = parser.add_argument_group('SLURM (--launcher slurm or submitit-local)')
    slurm.add_argument('--nodes', type=int, default=1, help='nodes per run')
    slurm.add_argument('--cpus-per-task', type=int, default=10, help='CPUs per GPU process (data loading)')
    slurm.add_argument('--timeout-min', type=int, default=1440,
                       help='time limit per job; a job that reaches it is requeued and resumes')
    slurm.add_argument('--partition', default=None)
    slurm.add_argument('--account', default=None)
    slurm.add_argument('--slurm-folder', default='', help='job scripts and logs (default: <root>/<dataset>/slurm/%%j)')
    slurm.add_argument('--wait', action='store_true', help='wait for the jobs, then write the table')
    table = parser.add_argument_group('results table')
    table.add_argument('--which', choices=('best', 'last'), default='best', help='epoch of each run')
    table.add_argument('--head', choices=('global', 'local', 'fused'), default='global')
    table.add_argument('--out-dir', default='', help='where to write it (default: log/<DATASET>)')
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def check_args(parser, args):
    """Reject combinations that cannot work, naming the options."""
    if args.seeds and 'SEED' in (args.opts or [])[::2]:
        parser.error('--opts SEED and --seeds both set the seed: use --seeds')
    if args.nodes > 1 and args.launcher != 'slurm':
        parser.error(f'--nodes {args.nodes} needs --launcher slurm (the other launchers use this machine only)')
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds {args.seeds}: each seed once')


def exit_on_sigterm(signum, frame):
    """SIGTERM handler: exit like Ctrl-C, so that the running training is stopped as well."""
    raise SystemExit(128 + signum)


if __name__ == '__main__':
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    run_command(main)
