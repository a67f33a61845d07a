"""Train and evaluate DK-CLIP on one fold: ``python main.py --config configs/dfew/fold1.yaml``.

The same command runs on the CPU, on one GPU, or under torchrun on several GPUs and nodes::

    torchrun --nproc_per_node=2 main.py --config configs/dfew/fold1.yaml --pretrained ViT-B-16.pt

After every epoch the test list (and the validation split, with ``DATA.VAL_FRACTION``) is evaluated;
the best epoch by ``TEST.BEST_METRIC`` of the global head and the last epoch are reported. Outputs in
``OUTPUT``: ``config.yaml``, ``log_rank0.txt``, ``metrics.jsonl``, TensorBoard events, ``last.pth``,
``best.pth``, ``confusion_matrix.png``; the last lines printed are ``RESULT head=... UAR=... WAR=...``.
"""
import argparse
import logging
import math
import os
import random

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

import models
from datasets import build_blender, build_dataloaders
from utils import distributed
from utils.checkpoint import (BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint, load_model_weights,
                              restore_training_state, save_checkpoint, training_state)
from utils.config import add_config_arguments, load_config, validate_config
from utils.engine import (Trainer, build_grad_scaler, build_model_for_run, class_prompt_tokens, evaluate,
                          evaluate_and_report, resolve_amp_dtype, train_one_epoch)
from utils.logger import close_logging, setup_logging
from utils.optimizer import build_optimizer, build_scheduler
from utils.plots import plot_confusion_matrix, save_evaluation_plots
from utils.reporting import append_record, is_better, per_class_table, result_lines

logger = logging.getLogger(__name__)

CONFUSION_MATRIX_FILE = 'confusion_matrix.png'
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
    """The checkpoint this run continues from (or evaluates): MODEL.RESUME, else OUTPUT/last.pth with
    TRAIN.AUTO_RESUME; '' for a fresh start."""
    if config.MODEL.RESUME:
        return config.MODEL.RESUME
    last = os.path.join(config.OUTPUT, LAST_CHECKPOINT)
    if config.TRAIN.AUTO_RESUME and os.path.isfile(last):
        logger.info('auto-resume: found %s', last)
        return last
    return ''


def build_trainer(config, context, model, train_loader):
    """Optimizer, schedule, scaler, objective, blender and the DDP wrapper around ``model``."""
    optimizer = build_optimizer(config, model)  # also freezes what must not train (before DDP sees it)
    updates_per_epoch = math.ceil(len(train_loader) / config.TRAIN.ACCUMULATION_STEPS)
    scheduler = build_scheduler(config, optimizer, updates_per_epoch)
    amp_dtype = resolve_amp_dtype(config.TRAIN.OPT_LEVEL, context.device)
    if context.world_size > 1:
        device_ids = [context.device.index] if context.device.type == 'cuda' else None
        model = DistributedDataParallel(model, device_ids=device_ids)
    writer = None
    if context.is_main:
        from torch.utils.tensorboard import SummaryWriter  # slow import, only where events are written
        writer = SummaryWriter(log_dir=config.OUTPUT)
    text_tokens, _ = class_prompt_tokens(config, context.device)
    return Trainer(config=config, model=model, criterion=models.build_criterion(config), optimizer=optimizer,
                   scheduler=scheduler, scaler=build_grad_scaler(context.device, amp_dtype),
                   text_tokens=text_tokens, device=context.device, amp_dtype=amp_dtype,
                   blender=build_blender(config), writer=writer)


def evaluate_splits(trainer, test_loader, val_loader=None, shuffled=False):
    """Evaluate the test list and, if given, the validation split: ``{split: Evaluation}``."""
    splits = {'test': test_loader, 'val': val_loader}
    return {split: evaluate(trainer.model, loader, trainer.text_tokens, trainer.config, trainer.device,
                            trainer.amp_dtype, shuffled=shuffled)
            for split, loader in splits.items() if loader is not None}


def record_evaluation(config, writer, epoch, split, evaluation, class_names):
    """Log one evaluation, append it to metrics.jsonl and write its TensorBoard scalars (rank 0)."""
    summary = ' | '.join(f'{head} UAR {report["UAR"]:.2f} WAR {report["WAR"]:.2f}'
                         for head, report in evaluation.heads.items())
    logger.info('Epoch %d %s (%d videos): %s', epoch, split, len(evaluation.labels), summary)
    if not distributed.is_main_process():
        return
    append_record(config.OUTPUT, {'type': 'eval', 'epoch': epoch, 'split': split,
                                  'num_videos': len(evaluation.labels), 'class_names': class_names,
                                  'heads': evaluation.heads})
    if writer is not None:
        for head, report in evaluation.heads.items():
            for metric in ('UAR', 'WAR'):
                writer.add_scalar(f'{split}/{head}/{metric}', report[metric], epoch)


def update_results(results, epoch, evaluations, config):
    """Record the epoch as the last one and, if it beats the best so far, as the best. Returns True then.

    The best epoch is chosen on the validation split when there is one, else on the test list (as
    published); the figures reported for it are always the test list's.
    """
    split = 'val' if 'val' in evaluations else 'test'
    metric = config.TEST.BEST_METRIC
    selection = evaluations[split].heads['global']
    record = {'epoch': epoch, 'heads': evaluations['test'].heads,
              'selection': {'split': split, 'metric': metric, 'value': selection[metric]}}
    results['last'] = record
    best = results.get('best')
    if is_better(selection, best and {metric: best['selection']['value']}, metric):
        results['best'] = record
        return True
    return False


def save_epoch(trainer, epoch, results, improved, class_names):
    """Write last.pth (every SAVE_FREQ epochs and after the final one), best.pth and the best epoch's
    confusion matrix."""
    config = trainer.config
    completed = epoch + 1
    save_last = completed % config.SAVE_FREQ == 0 or completed == config.TRAIN.EPOCHS
    if not (save_last or improved):
        return
    state = training_state(trainer.model, trainer.optimizer, trainer.scheduler, trainer.scaler, completed,
                           trainer.num_updates, results, config)
    if save_last:
        save_checkpoint(state, os.path.join(config.OUTPUT, LAST_CHECKPOINT))
    if improved:
        save_checkpoint(state, os.path.join(config.OUTPUT, BEST_CHECKPOINT))
        if distributed.is_main_process():
            plot_confusion_matrix(results['best']['heads']['global']['confusion_matrix'], class_names,
                                  os.path.join(config.OUTPUT, CONFUSION_MATRIX_FILE),
                                  f'global head, best epoch {epoch}')


def start_loader_epoch(loader, epoch, seed):
    """Make the epoch's shuffling a function of (seed, epoch), so that a resumed run repeats it."""
    if hasattr(loader.sampler, 'set_epoch'):
        loader.sampler.set_epoch(epoch)
    if loader.generator is not None:  # drives RandomSampler's order and the workers' seeds
        loader.generator.manual_seed(seed + 1_000_003 * epoch)


def record_training(config, writer, epoch, losses):
    """Append the epoch's mean losses to metrics.jsonl and TensorBoard (rank 0)."""
    if distributed.is_main_process():
        append_record(config.OUTPUT, {'type': 'train', 'epoch': epoch, 'losses': losses})
    if writer is not None:
        for name, value in losses.items():
            writer.add_scalar(f'epoch/{name}', value, epoch)


def train(trainer, loaders, start_epoch, results, class_names):
    """The epoch loop: train, evaluate, select, save."""
    config = trainer.config
    for epoch in range(start_epoch, config.TRAIN.EPOCHS):
        start_loader_epoch(loaders.train, epoch, config.SEED + distributed.get_rank())
        losses = train_one_epoch(trainer, loaders.train, epoch)
        record_training(config, trainer.writer, epoch, losses)
        evaluations = evaluate_splits(trainer, loaders.test, loaders.val)
        for split, evaluation in evaluations.items():
            record_evaluation(config, trainer.writer, epoch, split, evaluation, class_names)
        improved = update_results(results, epoch, evaluations, config)
        best = results['best']
        logger.info('best so far: epoch %d (%s %s of the global head %.2f)', best['epoch'],
                    best['selection']['split'], best['selection']['metric'], best['selection']['value'])
        save_epoch(trainer, epoch, results, improved, class_names)
    return results


def shuffled_check(trainer, test_loader):
    """Evaluate the best checkpoint on frame-shuffled test clips (``TEST.REPORT_SHUFFLED``)."""
    distributed.barrier()  # best.pth is written by rank 0
    path = os.path.join(trainer.config.OUTPUT, BEST_CHECKPOINT)
    load_model_weights(trainer.model, load_checkpoint(path), path)
    return evaluate_splits(trainer, test_loader, shuffled=True)['test'].heads


def report_final(config, results, class_names, shuffled_heads=None):
    """Log the best and last epochs, print the RESULT lines and write the ``final`` record."""
    best, last = results['best'], results['last']
    logger.info('best epoch %d, chosen by %s %s of the global head; test figures:\n%s', best['epoch'],
                best['selection']['split'], best['selection']['metric'],
                per_class_table(best['heads'], class_names))
    logger.info('last epoch %d, test figures:\n%s', last['epoch'], per_class_table(last['heads'], class_names))
    lines = result_lines(last['heads'], prefix='LAST', suffix=f' epoch={last["epoch"]}')
    if shuffled_heads:
        lines += result_lines(shuffled_heads, prefix='SHUFFLED', suffix=f' epoch={best["epoch"]}')
    lines += result_lines(best['heads'], suffix=f' epoch={best["epoch"]}')
    for line in lines:
        logger.info(line)
    if distributed.is_main_process():
        append_record(config.OUTPUT, {'type': 'final', 'dataset': config.DATA.DATASET, 'class_names': class_names,
                                      'best': best, 'last': last, 'shuffled': shuffled_heads})
        save_evaluation_plots(best['heads'], class_names, os.path.join(config.OUTPUT, BEST_TEST_PICTURES),
                              f'best epoch {best["epoch"]}')


def evaluate_checkpoint(config, context, model, checkpoint, path, test_loader):
    """The ``--only_test`` run: load the checkpoint's weights (if any), evaluate and report the test list."""
    if checkpoint is None:
        logger.warning('--only_test without a checkpoint (MODEL.RESUME): evaluating the freshly built model')
    else:
        load_model_weights(model, checkpoint, path)
    evaluation, class_names = evaluate_and_report(model, test_loader, config, context.device)
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
    if config.TEST.ONLY_TEST:
        return {'evaluation': evaluate_checkpoint(config, context, model, checkpoint, resume_path, loaders.test)}
    _, class_names = class_prompt_tokens(config, context.device)
    trainer = build_trainer(config, context, model, loaders.train)
    start_epoch, results = 0, {'best': None, 'last': None}
    if checkpoint is not None:
        start_epoch, trainer.num_updates, results = restore_training_state(
            checkpoint, resume_path, trainer.model, trainer.optimizer, trainer.scheduler, trainer.scaler)
    results = train(trainer, loaders, start_epoch, results, class_names)
    shuffled_heads = shuffled_check(trainer, loaders.test) if config.TEST.REPORT_SHUFFLED else None
    report_final(config, results, class_names, shuffled_heads)
    if trainer.writer is not None:
        trainer.writer.close()
    return {'results': results, 'shuffled': shuffled_heads}


def main(argv=None):
    """Command-line entry point (importable: ``main(['--config', ...])``); returns the results."""
    args = parse_args(argv)
    config = load_config(args)
    context = distributed.init_distributed()
    try:
        return run(config, context)
    finally:
        close_logging()
        distributed.cleanup_distributed()


if __name__ == '__main__':
    main()
