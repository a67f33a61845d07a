"""Cross-dataset evaluation: checkpoints trained on one dataset tested on the test lists of others,
classes mapped by name (docs/data.md, section 16).

Usage, from the repository root::

    python -m scripts.cross_dataset --checkpoints dfew=output/dfew/fold1/best.pth mafw=output/mafw/fold1/best.pth \\
        --tests dfew=configs/dfew/fold1.yaml ferv39k=configs/ferv39k/fold1.yaml mafw=configs/mafw/fold1.yaml \\
        --out-dir log/cross [--opts TEST.NUM_CLIP 2]

``NAME=`` is optional: a checkpoint is named by its config's ``DATA.DATASET``, a test by its config's.
A test config contributes its test list (``DATA.VAL_FILE``, ``DATA.ROOT``), its classes
(``DATA.LABEL_LIST``) and ``DATA.FRAME_ORDER``; everything else (frames, input size, views, prompts)
is the checkpoint's, with ``--opts`` on top. Every (checkpoint, test) pair is evaluated with
``scripts/eval.py``'s evaluation path:

- a test class is matched to the model's class of the same name (common spellings such as ``happy``
  count as ``happiness``); the videos of test classes the model does not have are left out and counted;
- the model's classes the test list does not have are left out of its decision: the prediction is the
  best-scoring shared class. How many videos the model would otherwise have given one of those classes
  is reported (``extra-class predictions``).

Writes into ``--out-dir``: ``cross_dataset.md`` and ``cross_dataset.csv`` (one row per pair: UAR,
UAR_release and WAR of the global head over the shared classes, videos used and left out),
``cross_dataset.png`` (UAR and WAR as trained-on x tested-on grids), and per pair in ``pairs/``:
``<trained>_on_<tested>.json`` (the mapping, the counts and the reports of every head),
``<trained>_on_<tested>.predictions.csv`` (the per-video predictions in the model's own classes, as
``scripts.eval --predictions`` writes them) and ``<trained>_on_<tested>.list.txt`` (the evaluated
videos, labels in the model's classes).
"""
import argparse
import csv
import logging
import os
from collections import Counter
from typing import NamedTuple

import torch

from datasets.annotations import drop_short_videos, read_annotation_list
from datasets.preparation import canonical_class
from scripts import eval as eval_script
from utils import distributed
from utils.checkpoint import load_checkpoint
from utils.config import config_for_checkpoint, get_default_config, merge_config_file
from utils.errors import UserError, run_command
from utils.files import atomic_write, write_json
from utils.labels import read_label_csv
from utils.logger import close_logging, setup_logging
from utils.metrics import classification_report
from utils.plots import plot_transfer_grid
from utils.reporting import class_names_from_prompts, format_recall, write_predictions

logger = logging.getLogger(__name__)

TABLE_NAME = 'cross_dataset'
PAIRS_FOLDER = 'pairs'
METRICS = ('UAR', 'UAR_release', 'WAR')


class CrossDatasetError(UserError, ValueError):
    """The command names checkpoints or tests that cannot be paired; the message says which."""


class TestSet(NamedTuple):
    """What a test config contributes: its name, list, root, class names and frame order."""
    name: str
    list_file: str
    root: str
    class_names: list
    frame_order: str


class Trained(NamedTuple):
    """A checkpoint to test: its name, path, loaded content and class names."""
    name: str
    path: str
    checkpoint: dict
    class_names: list


# ----------------------------------------------------------------------------------------------------
# Class mapping and the translated test list
# ----------------------------------------------------------------------------------------------------
def class_key(name):
    """The name classes are matched by: the project's name of a basic class or alias (``happy`` ->
    ``happiness``), else the name in lower case with single spaces (``anger and disgust``)."""
    return canonical_class(name) or ' '.join(name.lower().split())


def class_mapping(test_classes, model_classes):
    """For each test class, the index of the model's class of the same name, or None."""
    model_index = {class_key(name): index for index, name in enumerate(model_classes)}
    return [model_index.get(class_key(name)) for name in test_classes]


def translated_entries(test_set, mapping):
    """The test list's videos (short ones dropped, as the test loader drops them) split by whether the
    model has their class.

    Returns:
        (kept, left_out): kept = ``[(position in the list, entry, model label)]``; left_out = Counter of
        test class name -> videos left out.
    """
    entries = read_annotation_list(test_set.list_file, test_set.root, len(test_set.class_names))
    kept, left_out = [], Counter()
    for position, entry in enumerate(drop_short_videos(entries)):
        model_label = mapping[entry.label]
        if model_label is None:
            left_out[test_set.class_names[entry.label]] += 1
        else:
            kept.append((position, entry, model_label))
    return kept, left_out


def write_translated_list(path, kept):
    """The kept videos as an annotation list with absolute paths and the model's labels."""
    with atomic_write(path) as f:
        for _, entry, label in kept:
            frames = '' if entry.num_frames is None else f' {entry.num_frames}'
            f.write(f'{os.path.abspath(entry.path)}{frames} {label}\n')


# ----------------------------------------------------------------------------------------------------
# Figures over the shared classes
# ----------------------------------------------------------------------------------------------------
def shared_class_reports(evaluation, shared_columns, list_positions, release_shards):
    """Each head's report over the shared classes: scores restricted to the model's ``shared_columns``.

    Args:
        evaluation: the ``utils.engine.Evaluation`` of the translated list (labels in model classes).
        shared_columns: model class index of each shared class, in the test's class order.
        list_positions: int64 ``[N]`` position in the original test list of each translated-list video
            (so that ``UAR_release`` shards the list as the fold's own evaluation does).
        release_shards: ``TEST.RELEASE_UAR_SHARDS``.

    Returns:
        (dict head -> ``utils.metrics.classification_report``, videos whose unrestricted global
        prediction is a class the test list lacks).
    """
    columns = torch.tensor(shared_columns)
    position_of = torch.full((int(columns.max()) + 1,), -1, dtype=torch.long)
    position_of[columns] = torch.arange(len(columns))
    targets = position_of[evaluation.labels]
    positions = list_positions[evaluation.indices]
    reports = {head: classification_report(scores[:, columns], targets, len(columns), positions, release_shards)
               for head, scores in evaluation.scores.items()}
    predictions = evaluation.scores['global'].argmax(dim=1)
    extra = int((~torch.isin(predictions, columns)).sum())
    return reports, extra


def evaluate_pair(trained, test_set, opts, pair_prefix, context):
    """Evaluate one checkpoint on one test list; returns the pair's result dict (JSON-ready)."""
    mapping = class_mapping(test_set.class_names, trained.class_names)
    kept, left_out = translated_entries(test_set, mapping)
    result = {'trained_on': trained.name, 'tested_on': test_set.name, 'checkpoint': trained.path,
              'test_list': test_set.list_file,
              'class_mapping': {name: None if index is None else trained.class_names[index]
                                for name, index in zip(test_set.class_names, mapping)},
              'num_videos': len(kept), 'left_out': dict(left_out), 'extra_class_predictions': None,
              'heads': None}
    if not kept:
        logger.warning('%s on %s: no test video of a class the model has; nothing evaluated', trained.name,
                       test_set.name)
        return result
    list_path = f'{pair_prefix}.list.txt'
    write_translated_list(list_path, kept)  # every process writes the same file atomically
    args = eval_script.parse_args(['--checkpoint', trained.path, '--opts', 'DATA.ROOT', test_set.root,
                                   'DATA.VAL_FILE', list_path, 'DATA.FRAME_ORDER', test_set.frame_order,
                                   *(opts or [])])
    run = eval_script.run_evaluation(args, context, trained.checkpoint)
    shared_columns = [index for index in mapping if index is not None]
    list_positions = torch.tensor([position for position, _, _ in kept])
    result['heads'], result['extra_class_predictions'] = shared_class_reports(
        run.evaluation, shared_columns, list_positions, run.config.TEST.RELEASE_UAR_SHARDS)
    result['class_names'] = [name for name, index in zip(test_set.class_names, mapping) if index is not None]
    if context.is_main:
        write_predictions(f'{pair_prefix}.predictions.csv', run.evaluation, run.entries, run.class_names)
    return result


# ----------------------------------------------------------------------------------------------------
# Checkpoints and tests from the command line
# ----------------------------------------------------------------------------------------------------
def split_named(item):
    """``NAME=PATH`` -> (NAME, PATH); a bare ``PATH`` -> (None, PATH)."""
    name, separator, path = item.partition('=')
    return (name, path) if separator and name and not os.path.exists(item) else (None, item)


def unique_names(named, flag):
    """Check that no two checkpoints (or tests) share a name; returns ``named``."""
    repeated = [name for name, count in Counter(item.name for item in named).items() if count > 1]
    if repeated:
        raise CrossDatasetError(f'{flag}: two or more are named {repeated[0]!r}; name each one, e.g. '
                                f'{repeated[0]}1=... {repeated[0]}2=...')
    return named


def model_class_names(config):
    """Short class names of the prompts a checkpoint was trained with (its ``DATA.LABEL_LIST``)."""
    return class_names_from_prompts(read_label_csv(config.DATA.LABEL_LIST))


def load_trained(item):
    """A ``[NAME=]CHECKPOINT`` argument -> :class:`Trained` (named by its ``DATA.DATASET`` by default)."""
    name, path = split_named(item)
    checkpoint = load_checkpoint(path)
    config = config_for_checkpoint(checkpoint['config'])
    return Trained(name or config.DATA.DATASET, path, checkpoint, model_class_names(config))


def load_test_set(item):
    """A ``[NAME=]CONFIG.yaml`` argument -> :class:`TestSet` (named by its ``DATA.DATASET`` by default)."""
    name, path = split_named(item)
    config = merge_config_file(get_default_config(), path)
    if not config.DATA.VAL_FILE:
        raise CrossDatasetError(f'{path}: DATA.VAL_FILE is empty: the test config must name a test list')
    class_names = model_class_names(config)
    return TestSet(name or config.DATA.DATASET, config.DATA.VAL_FILE, config.DATA.ROOT, class_names,
                   config.DATA.FRAME_ORDER)


# ----------------------------------------------------------------------------------------------------
# The table and its picture
# ----------------------------------------------------------------------------------------------------
def global_figure(result, metric):
    """The global head's ``metric`` of a pair, or None (nothing evaluated, or no such figure)."""
    return (result['heads'] or {}).get('global', {}).get(metric)


def table_cells(result):
    """One table row: trained on, tested on, shared classes, videos used, left out, extra-class
    predictions, UAR, UAR_release, WAR."""
    left_out = sum(result['left_out'].values())
    shared = sum(index is not None for index in result['class_mapping'].values())
    extra = result['extra_class_predictions']
    return ([result['trained_on'], result['tested_on'], f'{shared}/{len(result["class_mapping"])}',
             str(result['num_videos']), str(left_out), '-' if extra is None else str(extra)]
            + [format_recall(global_figure(result, metric)) for metric in METRICS])


TABLE_HEADERS = ['Trained on', 'Tested on', 'Shared classes', 'Videos', 'Left out', 'Extra-class predictions',
                 'UAR', 'UAR_release', 'WAR']
CSV_HEADERS = ['trained_on', 'tested_on', 'shared_classes', 'videos', 'left_out', 'extra_class_predictions',
               'UAR', 'UAR_release', 'WAR']


def markdown_table(results):
    """``cross_dataset.md``: what the figures are, then one row per pair."""
    lines = ['### Cross-dataset evaluation', '',
             'Global head, in percent, over the classes the model and the test list share (matched by name; '
             'the prediction is the best-scoring shared class). Videos: test videos evaluated; Left out: '
             'videos of test classes the model does not have; Extra-class predictions: evaluated videos '
             'whose best class overall is one the test list lacks. UAR_release: the release\'s UAR (mean '
             'over stride shards of the test list, docs/data.md section 15).', '',
             '| ' + ' | '.join(TABLE_HEADERS) + ' |', '|' + ':-----|' * 2 + ':-----:|' * (len(TABLE_HEADERS) - 2)]
    return '\n'.join(lines + ['| ' + ' | '.join(table_cells(result)) + ' |' for result in results]) + '\n'


def transfer_grids(results, trained_names, test_names):
    """``{metric: [rows of trained_names][columns of test_names]}`` of the global head (None: no figure)."""
    by_pair = {(result['trained_on'], result['tested_on']): result for result in results}
    return {metric: [[global_figure(by_pair[trained, tested], metric) for tested in test_names]
                     for trained in trained_names] for metric in ('UAR', 'WAR')}


def write_tables(results, out_dir, trained_names, test_names):
    """``cross_dataset.md``, ``.csv`` and ``.png`` in ``out_dir``; returns their paths."""
    base = os.path.join(out_dir, TABLE_NAME)
    with atomic_write(base + '.md') as f:
        f.write(markdown_table(results))
    with atomic_write(base + '.csv') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(CSV_HEADERS)
        writer.writerows([cell if cell != '-' else '' for cell in table_cells(result)] for result in results)
    picture = plot_transfer_grid(transfer_grids(results, trained_names, test_names), trained_names, test_names,
                                 base + '.png', 'Cross-dataset transfer, global head (shared classes)')
    return [base + '.md', base + '.csv', picture]


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m scripts.cross_dataset', description=__doc__.split('\n')[0])
    parser.add_argument('--checkpoints', nargs='+', required=True, metavar='[NAME=]CHECKPOINT',
                        help='DK-CLIP checkpoints (default name: their DATA.DATASET)')
    parser.add_argument('--tests', nargs='+', required=True, metavar='[NAME=]CONFIG',
                        help='configs naming a test list and its classes (default name: their DATA.DATASET)')
    parser.add_argument('--out-dir', default=os.path.join('log', 'cross_dataset'), help='where to write')
    parser.add_argument('--opts', nargs='+', default=None,
                        help="override the checkpoints' settings: 'KEY VALUE' pairs (e.g. TEST.NUM_CLIP 2)")
    return parser.parse_args(argv)


def evaluate_all(trained, test_sets, args, context):
    """Every (checkpoint, test) pair, in that order; each pair's JSON written (rank 0)."""
    pairs_folder = os.path.join(args.out_dir, PAIRS_FOLDER)
    os.makedirs(pairs_folder, exist_ok=True)
    results = []
    for model in trained:
        for test_set in test_sets:
            prefix = os.path.join(pairs_folder, f'{model.name}_on_{test_set.name}')
            results.append(evaluate_pair(model, test_set, args.opts, prefix, context))
            if context.is_main:
                write_json(f'{prefix}.json', results[-1])
    return results


def main(argv=None):
    """Command-line entry point; prints the table and returns the pairs' result dicts."""
    args = parse_args(argv)
    test_sets = unique_names([load_test_set(item) for item in args.tests], '--tests')
    trained = unique_names([load_trained(item) for item in args.checkpoints], '--checkpoints')
    context = distributed.init_distributed()
    setup_logging(None, context.rank)
    try:
        results = evaluate_all(trained, test_sets, args, context)
        if context.is_main:
            paths = write_tables(results, args.out_dir, [model.name for model in trained],
                                 [test_set.name for test_set in test_sets])
            print(markdown_table(results))
            print('written:', *paths)
        return results
    finally:
        close_logging()
        distributed.cleanup_distributed()


if __name__ == '__main__':
    run_command(main)
