"""Evaluate a DK-CLIP checkpoint, or CLIP itself (zero-shot), on a test list with multi-view testing.

Prints the per-class recall table and the ``RESULT head=... UAR=... WAR=...`` lines of the global, local
and fused heads, and writes them (with the confusion matrices) to a JSON file, with pictures next to it:
``<stem>.confusion_<head>.png`` (row-normalised confusion matrix) and ``<stem>.recall.png`` (per-class
recall of the heads), where ``<stem>`` is the JSON path without ``.json``. The evaluation code is the one
``main.py`` runs after every epoch; under torchrun the test list is split across processes and the
predictions are gathered before any metric is computed.

Usage, from the repository root::

    python -m scripts.eval --checkpoint output/dfew/fold1/best.pth [--config configs/dfew/fold1.yaml]
        [--opts TEST.NUM_CLIP 2 TEST.NUM_CROP 3 DATA.VAL_FILE other_list.txt] [--json results.json]
        [--predictions predictions.csv]
    python -m scripts.eval --zero-shot --config configs/dfew/fold1.yaml [--pretrained ViT-B-16.pt]

Without ``--config`` the config stored in the checkpoint is used. ``--opts TEST.SHUFFLE_FRAMES True``
evaluates frame-shuffled clips (a check that the model uses the order of the frames). ``--predictions``
writes one CSV row per test video, in list order: its index, path and label, the class each head
predicts and the global head's class probabilities (for error analysis, ensembles, significance tests).

``--zero-shot`` evaluates CLIP without any DK-CLIP training (``models/zero_shot.py``, docs/model.md
section 16): the config's test list, views and prompts (``DATA.LABEL_LIST``, AU-enhanced or plain names),
CLIP's weights from ``MODEL.PRETRAINED`` (``--pretrained``) or the CLIP cache, one head (``global``). Its
JSON goes to ``<OUTPUT>/zero_shot.eval.json`` unless ``--json`` says otherwise.
"""
import argparse
import logging
import os
from typing import Any, NamedTuple

from datasets import build_dataloaders
from utils import distributed
from utils.checkpoint import load_checkpoint, load_model_weights
from utils.config import config_for_checkpoint, validate_config
from models.builder import build_model_for_run, class_prompt_tokens, load_clip_state_dict
from models.zero_shot import build_zero_shot_model
from utils.engine import evaluate_and_log
from utils.errors import run_command
from utils.files import write_json
from utils.logger import close_logging, setup_logging
from utils.plots import save_evaluation_plots
from utils.reporting import write_predictions

logger = logging.getLogger(__name__)

# The zero-shot evaluation's result file, in the config's OUTPUT folder (without --json).
ZERO_SHOT_JSON = 'zero_shot.eval.json'


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m scripts.eval', description=__doc__.split('\n')[0])
    parser.add_argument('--checkpoint', default='', help='DK-CLIP checkpoint (last.pth, best.pth)')
    parser.add_argument('--zero-shot', action='store_true',
                        help='evaluate CLIP itself instead of a checkpoint (needs --config)')
    parser.add_argument('--pretrained', default='', help='CLIP weights file for --zero-shot (MODEL.PRETRAINED)')
    parser.add_argument('--config', default='', help="YAML config (default: the checkpoint's own)")
    parser.add_argument('--opts', nargs='+', default=None, help="override settings: 'KEY VALUE' pairs")
    parser.add_argument('--json', default='', help='result file (default: <checkpoint>.eval.json; with '
                                                   f'--zero-shot <OUTPUT>/{ZERO_SHOT_JSON})')
    parser.add_argument('--predictions', default='', metavar='FILE.csv',
                        help='also write the per-video predictions to this CSV file')
    args = parser.parse_args(argv)
    if bool(args.checkpoint) == args.zero_shot:
        parser.error('give --checkpoint CHECKPOINT, or --zero-shot with --config CONFIG')
    if args.zero_shot and not args.config:
        parser.error('--zero-shot needs --config: the dataset, its test list and its prompts')
    return args


def evaluation_config(args, checkpoint):
    """The config to evaluate with: ``--config`` or the checkpoint's, then ``--opts``; test only.

    Zero-shot (``checkpoint`` None): ``--config``, ``--opts``, then ``--pretrained``; no local head.
    """
    config = config_for_checkpoint(checkpoint and checkpoint['config'], args.config, args.opts)
    config.TEST.ONLY_TEST = True
    if checkpoint is None:
        config.MODEL.PRETRAINED = args.pretrained or config.MODEL.PRETRAINED
        config.MODEL.USE_LOCAL = False  # CLIP scores whole clips: the global head only
    else:
        config.MODEL.RESUME = args.checkpoint
    config.freeze()
    return validate_config(config)


def build_evaluated_model(args, config, device, checkpoint):
    """DK-CLIP with the checkpoint's weights, or (``checkpoint`` None) zero-shot CLIP with the config's
    CLIP weights."""
    if checkpoint is None:
        return build_zero_shot_model(config, load_clip_state_dict(config)).to(device)
    model = build_model_for_run(config, device, checkpoint)
    load_model_weights(model, checkpoint, args.checkpoint)
    return model


class EvaluationRun(NamedTuple):
    """What :func:`run_evaluation` evaluated and found."""
    evaluation: Any  # utils.engine.Evaluation
    config: Any  # the resolved, validated config
    class_names: list  # the model's short class names
    entries: list  # the test list's entries (for the paths of the per-video predictions)


def run_evaluation(args, context, checkpoint=None):
    """Evaluate what ``args`` name on the config's test list in this process group; writes nothing.

    Args:
        args: the parsed command line (:func:`parse_args`).
        context: this process's ``utils.distributed.DistributedContext``.
        checkpoint: the loaded ``--checkpoint``, or None for ``--zero-shot``.

    Returns:
        EvaluationRun, on every process (the predictions of all processes gathered).
    """
    config = evaluation_config(args, checkpoint)
    loaders = build_dataloaders(config, context.rank, context.world_size)
    model = build_evaluated_model(args, config, context.device, checkpoint)
    text_tokens, class_names = class_prompt_tokens(config, context.device)
    if checkpoint is None:
        logger.info('zero-shot CLIP (%s) on %s', config.MODEL.PRETRAINED or config.MODEL.ARCH,
                    config.DATA.VAL_FILE)
    evaluation = evaluate_and_log(model, loaders.test, text_tokens, class_names, config, context.device)
    return EvaluationRun(evaluation, config, class_names, loaders.test.dataset.entries)


def result_path(args, config):
    """``--json``, else ``<checkpoint>.eval.json``, else (zero-shot) ``<OUTPUT>/zero_shot.eval.json``."""
    if args.json:
        return args.json
    if args.checkpoint:
        return os.path.splitext(args.checkpoint)[0] + '.eval.json'
    return os.path.join(config.OUTPUT, ZERO_SHOT_JSON)


def write_results(path, args, config, checkpoint, evaluation, class_names):
    """The figures of every head, with what was evaluated, as JSON; the pictures next to it."""
    epoch = checkpoint.get('epoch', 0) - 1 if checkpoint else None
    weights = config.MODEL.PRETRAINED or config.MODEL.ARCH if args.zero_shot else None
    result = {'checkpoint': args.checkpoint or None, 'epoch': epoch, 'zero_shot_clip': weights,
              'list': config.DATA.VAL_FILE, 'num_videos': len(evaluation.labels),
              'views': {'clips': config.TEST.NUM_CLIP, 'crops': config.TEST.NUM_CROP},
              'frames_shuffled': config.TEST.SHUFFLE_FRAMES, 'class_names': class_names,
              'heads': evaluation.heads}
    write_json(path, result)  # creates the folder
    title = os.path.basename(args.checkpoint) if args.checkpoint else 'zero-shot CLIP'
    pictures = save_evaluation_plots(evaluation.heads, class_names, os.path.splitext(path)[0], title)
    logger.info('written %s and %s', path, ', '.join(pictures))


def write_outputs(args, run, checkpoint):
    """The result JSON with its pictures and, with ``--predictions``, the per-video CSV (rank 0)."""
    write_results(result_path(args, run.config), args, run.config, checkpoint, run.evaluation, run.class_names)
    if args.predictions:
        write_predictions(args.predictions, run.evaluation, run.entries, run.class_names)
        logger.info('written %s', args.predictions)


def main(argv=None):
    """Command-line entry point; returns the :class:`utils.engine.Evaluation`."""
    args = parse_args(argv)
    checkpoint = load_checkpoint(args.checkpoint) if args.checkpoint else None
    context = distributed.init_distributed()
    setup_logging(None, context.rank)
    try:
        run = run_evaluation(args, context, checkpoint)
        if context.is_main:
            write_outputs(args, run, checkpoint)
        return run.evaluation
    finally:
        close_logging()
        distributed.cleanup_distributed()


if __name__ == '__main__':
    run_command(main)
