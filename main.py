"""Train and evaluate DK-CLIP on one fold: ``python main.py --config configs/dfew/fold1.yaml``.

The same command runs on the CPU, on one GPU, or under torchrun on several GPUs and nodes::

    torchrun --nproc_per_node=2 main.py --config configs/dfew/fold1.yaml --pretrained ViT-B-16.pt

The run, top to bottom: config and logs, data, model, optimizer and objective, an optional resume,
the epoch loop (``utils.engine.fit``: train, evaluate the test list and the validation split, keep
the best epoch, save), then the final report. Outputs in ``OUTPUT``: ``config.yaml``,
``log_rank0.txt``, ``metrics.jsonl``, TensorBoard events, ``last.pth``, ``best.pth``,
``confusion_matrix.png``; the last lines printed are ``RESULT head=... UAR=... WAR=...``.
"""
import argparse
import logging
import math
import os
import random

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from datasets import build_blender, build_dataloaders
from models.builder import build_model_for_run, class_prompt_tokens
from models.loss import build_criterion
from utils import distributed
from utils.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint, load_model_weights, \
    restore_training_state, torchrun_job_of
from utils.config import ConfigError, add_config_arguments, load_config, validate_config
from utils.engine import Trainer, build_grad_scaler, evaluate_and_log, evaluate_splits, fit, log_evaluation, \
    record_evaluation, resolve_amp_dtype
from utils.errors import UserError, run_command
from utils.logger import close_logging, log_traceback_to_file, setup_logging
from utils.optimizer import build_optimizer, build_scheduler
from utils.plots import save_evaluation_plots
from utils.reporting import append_record, drop_records_from

logger = logging.getLogger(__name__)

# Prefix of the pictures of the best epoch's test figures written at the end of a run.
BEST_TEST_PICTURES = 'best_test'


def parse_args(argv=None):
    """The official release's command-line flags (see ``utils.config.add_config_arguments``)."""
    parser = argparse.ArgumentParser(description='Train and evaluate DK-CLIP on one fold.')
    return add_config_arguments(parser).parse_args(argv)


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def prepare_run(config, context):
    """Generate the synthetic dataset if asked, validate the config, set up the output folder and logs."""
    if config.DATA.SYNTHETIC.GENERATE and context.is_main:
        from datasets.synthetic import ensure_synthetic_dataset  # the generator is needed by demos only
        ensure_synthetic_dataset(config)
    distributed.barrier()  # the other processes wait for the generated lists
    validate_config(config)
    setup_logging(config.OUTPUT, context.rank)
    if context.is_main:
        with open(os.path.join(config.OUTPUT, 'config.yaml'), 'w', encoding='utf-8') as f:
            f.write(config.dump())
    logger.info('full config:\n%s', config.dump())
    logger.info('running on %s, %d process(es)', context.device, context.world_size)


def checkpoint_to_resume(config):
    """The checkpoint this run continues from (or evaluates): after a torchrun restart the last.pth of
    an earlier round, else MODEL.RESUME, else OUTPUT/last.pth with TRAIN.AUTO_RESUME; '' for a fresh start."""
    last = os.path.join(config.OUTPUT, LAST_CHECKPOINT)
    if restarted_from_own_checkpoint(config, last):
        return last
    if config.MODEL.RESUME:
        return config.MODEL.RESUME
    if config.TRAIN.AUTO_RESUME and os.path.isfile(last):
        logger.info('auto-resume: found %s', last)
        return last
    return ''


def restarted_from_own_checkpoint(config, last):
    """Whether torchrun restarted this worker group (``--max-restarts``) and an earlier round of the same
    torchrun job wrote ``last``: the restarted workers then continue from it by themselves.

    A last.pth of another job (an older run in the same folder) is left alone: the round starts as the
    first one did (docs/distributed.md, section 2).
    """
    restarted = distributed.group_was_restarted()  # on every process: it gathers from all of them
    if not restarted or config.TEST.ONLY_TEST or not os.path.isfile(last):
        return False
    if torchrun_job_of(last) != distributed.elastic_run_id():
        logger.info('torchrun restarted the workers; %s was written by another job and is not resumed', last)
        return False
    logger.info('torchrun restarted the workers: resuming from %s, written by an earlier round', last)
    return True


def build_trainer(config, context, model, num_updates_per_epoch, text_tokens, class_names):
    """Optimizer, schedule, scaler, objective, blender and the DDP wrapper around ``model`` (also what
    ``scripts/benchmark.py`` times)."""
    optimizer = build_optimizer(config, model)  # also freezes what must not train (before DDP sees it)
    scheduler = build_scheduler(config, optimizer, num_updates_per_epoch)
    amp_dtype = resolve_amp_dtype(config.TRAIN.OPT_LEVEL, context.device)
    if context.world_size > 1:
        device_ids = [context.device.index] if context.device.type == 'cuda' else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    return Trainer(config=config, model=model, criterion=build_criterion(config), optimizer=optimizer,
                   scheduler=scheduler, scaler=build_grad_scaler(context.device, amp_dtype),
                   text_tokens=text_tokens, class_names=class_names, device=context.device,
                   amp_dtype=amp_dtype, blender=build_blender(config))


def open_event_writer(config, context):
    """TensorBoard's writer into ``OUTPUT`` on rank 0, None elsewhere."""
    if not context.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter  # slow import, only where events are written
    return SummaryWriter(log_dir=config.OUTPUT)


def updates_per_epoch(config, train_loader):
    """Optimizer updates per epoch: a trailing partial accumulation window counts only with
    ``TRAIN.TRAILING_MICRO_BATCHES update``."""
    steps, accumulation = len(train_loader), config.TRAIN.ACCUMULATION_STEPS
    updates = math.ceil(steps / accumulation) if config.TRAIN.TRAILING_MICRO_BATCHES == 'update' \
        else steps // accumulation
    if updates == 0:
        raise ConfigError(f'TRAIN.ACCUMULATION_STEPS = {accumulation}: an epoch has only {steps} micro-batches, '
                          f'so no update (TRAIN.TRAILING_MICRO_BATCHES drop); lower it or use update')
    return updates


def resume_training(trainer, checkpoint, path, train_loader):
    """Restore the checkpoint's training state; returns (start epoch, results so far).

    Records of the epochs that will be trained again are dropped from metrics.jsonl, so that a
    resumed run's file reads like an uninterrupted one's.
    """
    start_epoch, trainer.num_updates, results = restore_training_state(
        checkpoint, path, trainer.model, trainer.optimizer, trainer.scheduler, trainer.scaler,
        updates_per_epoch(trainer.config, train_loader))
    if distributed.is_main_process():
        drop_records_from(trainer.config.OUTPUT, start_epoch)
    return start_epoch, {'best': results.get('best'), 'last': results.get('last')}


def shuffled_check(trainer, test_loader):
    """Evaluate the best checkpoint on frame-shuffled test clips (``TEST.REPORT_SHUFFLED``)."""
    distributed.barrier()  # best.pth is written by rank 0
    path = os.path.join(trainer.config.OUTPUT, BEST_CHECKPOINT)
    load_model_weights(trainer.model, load_checkpoint(path), path)
    return evaluate_splits(trainer, test_loader, shuffled=True)['test'].heads


def report_final(config, results, class_names, shuffled_heads=None):
    """Log the last, shuffled and best figures (RESULT lines last) and write the ``final`` record."""
    best, last = results['best'], results['last']
    log_evaluation(last['heads'], class_names, f'last epoch {last["epoch"]}, test figures', prefix='LAST',
                   suffix=f' epoch={last["epoch"]}')
    if shuffled_heads:
        log_evaluation(shuffled_heads, class_names, f'best epoch {best["epoch"]}, frames shuffled',
                       prefix='SHUFFLED', suffix=f' epoch={best["epoch"]}')
    log_evaluation(best['heads'], class_names, f'best epoch {best["epoch"]}, chosen by '
                   f'{best["selection"]["split"]} {best["selection"]["metric"]} of the global head; test figures',
                   suffix=f' epoch={best["epoch"]}')
    if distributed.is_main_process():
        append_record(config.OUTPUT, {'type': 'final', 'dataset': config.DATA.DATASET, 'class_names': class_names,
                                      'best': best, 'last': last, 'shuffled': shuffled_heads})
        save_evaluation_plots(best['heads'], class_names, os.path.join(config.OUTPUT, BEST_TEST_PICTURES),
                              f'best epoch {best["epoch"]}')


def evaluate_checkpoint(config, context, model, checkpoint, text_tokens, class_names, test_loader):
    """The ``--only_test`` run: evaluate the (loaded) model on the test list and report it."""
    if checkpoint is None:
        logger.warning('--only_test without a checkpoint (MODEL.RESUME): evaluating the freshly built model')
    evaluation = evaluate_and_log(model, test_loader, text_tokens, class_names, config, context.device)
    epoch = checkpoint['epoch'] - 1 if checkpoint else -1
    record_evaluation(config, None, epoch, 'test', evaluation, class_names)
    return evaluation


def run(config, context):
    """Set up, then train and evaluate (or only evaluate); returns the results dict."""
    prepare_run(config, context)
    seed_everything(config.SEED + context.rank)
    loaders = build_dataloaders(config, context.rank, context.world_size)
    resume_path = checkpoint_to_resume(config)
    checkpoint = load_checkpoint(resume_path) if resume_path else None
    model = build_model_for_run(config, context.device, checkpoint)
    text_tokens, class_names = class_prompt_tokens(config, context.device)
    if config.TEST.ONLY_TEST:
        if checkpoint is not None:
            load_model_weights(model, checkpoint, resume_path)
        evaluation = evaluate_checkpoint(config, context, model, checkpoint, text_tokens, class_names,
                                         loaders.test)
        return {'evaluation': evaluation}
    trainer = build_trainer(config, context, model, updates_per_epoch(config, loaders.train), text_tokens,
                            class_names)
    trainer.writer = open_event_writer(config, context)
    start_epoch, results = 0, {'best': None, 'last': None}
    if checkpoint is not None:
        start_epoch, results = resume_training(trainer, checkpoint, resume_path, loaders.train)
    results = fit(trainer, loaders, start_epoch, results)
    shuffled_heads = shuffled_check(trainer, loaders.test) if config.TEST.REPORT_SHUFFLED else None
    report_final(config, results, class_names, shuffled_heads)
    if trainer.writer is not None:
        trainer.writer.close()
    return {'results': results, 'shuffled': shuffled_heads}


def main(argv=None):
    """Command-line entry point (importable: ``main(['--config', ...])``); returns the results.

    A user error (:class:`utils.errors.UserError`) keeps its traceback in the log file and is raised
    on; ``python main.py`` prints it as one line (:func:`utils.errors.run_command`).
    """
    args = parse_args(argv)
    config = load_config(args)
    context = distributed.init_distributed()
    try:
        return run(config, context)
    except UserError as error:
        log_traceback_to_file(f'stopped by a user error: {error}', error)
        raise
    finally:
        close_logging()
        distributed.cleanup_distributed()


if __name__ == '__main__':
    run_command(main)
