"""Evaluate a DK-CLIP checkpoint on a test list with multi-view testing.

Prints the per-class recall table and the ``RESULT head=... UAR=... WAR=...`` lines of the global, local
and fused heads, and writes them (with the confusion matrices) to a JSON file, with pictures next to it:
``<stem>.confusion_<head>.png`` (row-normalised confusion matrix) and ``<stem>.recall.png`` (per-class
recall of the heads), where ``<stem>`` is the JSON path without ``.json``. The evaluation code is the one
``main.py`` runs after every epoch; under torchrun the test list is split across processes and the
predictions are gathered before any metric is computed.

Usage, from the repository root::

    python -m scripts.eval --checkpoint output/dfew/fold1/best.pth [--config configs/dfew/fold1.yaml]
        [--opts TEST.NUM_CLIP 2 TEST.NUM_CROP 3 DATA.VAL_FILE other_list.txt] [--json results.json]

Without ``--config`` the config stored in the checkpoint is used. ``--opts TEST.SHUFFLE_FRAMES True``
evaluates frame-shuffled clips (a check that the model uses the order of the frames).
"""
import argparse
import logging
import os

from datasets import build_dataloaders
from utils import distributed
from utils.checkpoint import load_checkpoint, load_model_weights
from utils.config import config_for_checkpoint, validate_config
from models.builder import build_model_for_run, class_prompt_tokens
from utils.engine import evaluate_and_log
from utils.errors import run_command
from utils.files import write_json
from utils.logger import close_logging, setup_logging
from utils.plots import save_evaluation_plots

logger = logging.getLogger(__name__)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m scripts.eval', description=__doc__.split('\n')[0])
    parser.add_argument('--checkpoint', required=True, help='DK-CLIP checkpoint (last.pth, best.pth)')
    parser.add_argument('--config', default='', help="YAML config (default: the checkpoint's own)")
    parser.add_argument('--opts', nargs='+', default=None, help="override settings: 'KEY VALUE' pairs")
    parser.add_argument('--json', default='', help='result file (default: <checkpoint>.eval.json)')
    return parser.parse_args(argv)


def evaluation_config(args, checkpoint):
    """The config to evaluate with: ``--config`` or the checkpoint's, then ``--opts``; test only."""
    config = config_for_checkpoint(checkpoint['config'], args.config, args.opts)
    config.TEST.ONLY_TEST = True
    config.MODEL.RESUME = args.checkpoint
    config.freeze()
    return validate_config(config)


def write_results(path, args, config, checkpoint, evaluation, class_names):
    """The figures of every head, with what was evaluated, as JSON; the pictures next to it."""
    result = {'checkpoint': args.checkpoint, 'epoch': checkpoint.get('epoch', 0) - 1,
              'list': config.DATA.VAL_FILE, 'num_videos': len(evaluation.labels),
              'views': {'clips': config.TEST.NUM_CLIP, 'crops': config.TEST.NUM_CROP},
              'frames_shuffled': config.TEST.SHUFFLE_FRAMES, 'class_names': class_names,
              'heads': evaluation.heads}
    write_json(path, result)
    pictures = save_evaluation_plots(evaluation.heads, class_names, os.path.splitext(path)[0],
                                     os.path.basename(args.checkpoint))
    logger.info('written %s and %s', path, ', '.join(pictures))


def main(argv=None):
    """Command-line entry point; returns the :class:`utils.engine.Evaluation`."""
    args = parse_args(argv)
    checkpoint = load_checkpoint(args.checkpoint)
    config = evaluation_config(args, checkpoint)
    context = distributed.init_distributed()
    setup_logging(None, context.rank)
    try:
        loaders = build_dataloaders(config, context.rank, context.world_size)
        model = build_model_for_run(config, context.device, checkpoint)
        load_model_weights(model, checkpoint, args.checkpoint)
        text_tokens, class_names = class_prompt_tokens(config, context.device)
        evaluation = evaluate_and_log(model, loaders.test, text_tokens, class_names, config, context.device)
        if context.is_main:
            json_path = args.json or os.path.splitext(args.checkpoint)[0] + '.eval.json'
            write_results(json_path, args, config, checkpoint, evaluation, class_names)
        return evaluation
    finally:
        close_logging()
        distributed.cleanup_distributed()


if __name__ == '__main__':
    run_command(main)
