"""Build the published results table from finished output folders.

Reads the ``final`` record of each folder's ``metrics.jsonl`` and writes ``log/<DATASET>/results.md``
(per-class recall, UAR and WAR in percent: one row per fold and an Avg row, the layout of the official
README) and ``results.csv`` with the same rows.

Usage, from the repository root::

    python -m scripts.summarize output/dfew/fold1 output/dfew/fold2 ... [--which best|last]
        [--head global|local|fused] [--out-dir log/DFEW]
"""
import argparse
import csv
import logging
import os
import re

from utils.reporting import PUBLISHED_CLASS_HEADERS, final_record, format_recall

logger = logging.getLogger(__name__)

DATASET_TITLES = {'dfew': 'DFEW', 'ferv39k': 'FERV39K', 'mafw': 'MAFW', 'synthetic': 'SYNTHETIC'}


def dataset_title(dataset):
    """The dataset's name as the published tables and ``log/`` folders spell it (``dfew`` -> ``DFEW``)."""
    return DATASET_TITLES.get(dataset, dataset.upper())


def fold_label(output_dir):
    """Row label of a folder: the number at the end of its name (``fold3`` -> ``3``), else the name."""
    name = os.path.basename(os.path.normpath(output_dir))
    match = re.search(r'(\d+)$', name)
    return match.group(1) if match else name


def read_fold_row(output_dir, which, head):
    """One table row from a finished output folder.

    Returns:
        dict with ``label``, ``recall`` (per class, None for absent classes), ``UAR``, ``WAR``, and the
        run's ``class_names`` and ``dataset``.

    Raises:
        ValueError: the folder holds no finished run, or lacks the head; names the folder.
    """
    record = final_record(output_dir)
    if record is None:
        raise ValueError(f'{output_dir}: no finished run (metrics.jsonl without a "final" record)')
    heads = record[which]['heads']
    if head not in heads:
        raise ValueError(f'{output_dir}: no {head!r} head in the results (heads: {sorted(heads)})')
    report = heads[head]
    return {'label': fold_label(output_dir), 'recall': report['per_class_recall'], 'UAR': report['UAR'],
            'WAR': report['WAR'], 'class_names': record['class_names'], 'dataset': record['dataset']}


def mean_or_none(values):
    """Mean of the values that are not None; None if there are none."""
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def average_row(rows):
    """The Avg row: the mean of each column over the folds."""
    recall = [mean_or_none(column) for column in zip(*(row['recall'] for row in rows))]
    return {'label': 'Avg', 'recall': recall, 'UAR': mean_or_none([row['UAR'] for row in rows]),
            'WAR': mean_or_none([row['WAR'] for row in rows])}


def table_cells(row):
    """The formatted cells of a row: label, per-class recalls, UAR, WAR."""
    return [row['label']] + [format_recall(value) for value in row['recall'] + [row['UAR'], row['WAR']]]


def markdown_table(title, class_names, rows, description):
    """The results table in the official README's markdown layout."""
    headers = [PUBLISHED_CLASS_HEADERS.get(name, name) for name in class_names]
    lines = [f'### {title}', '', description, '',
             '| Fold | ' + ' | '.join(headers + ['UAR', 'WAR']) + ' |',
             '|:-----|' + ':-----:|' * (len(headers) + 2)]
    lines += ['| ' + ' | '.join(table_cells(row)) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


def write_results(output_dirs, out_dir=None, which='best', head='global'):
    """Write ``results.md`` and ``results.csv`` for the finished runs in ``output_dirs``.

    Args:
        output_dirs: output folders of the folds, in row order.
        out_dir: where to write; default ``log/<DATASET>``.
        which: ``best`` (the selected epoch, as published) or ``last``.
        head: ``global`` (as published), ``local`` or ``fused``.

    Returns:
        (path of results.md, path of results.csv).
    """
    rows = [read_fold_row(output_dir, which, head) for output_dir in output_dirs]
    if not rows:
        raise ValueError('no output folders given')
    class_names, title = rows[0]['class_names'], dataset_title(rows[0]['dataset'])
    rows.append(average_row(rows))
    out_dir = out_dir or os.path.join('log', title)
    os.makedirs(out_dir, exist_ok=True)
    description = f'Per-class recall, UAR and WAR in percent; {head} head, {which} epoch of each fold.'
    markdown_path = os.path.join(out_dir, 'results.md')
    with open(markdown_path, 'w', encoding='utf-8') as f:
        f.write(markdown_table(title, class_names, rows, description))
    csv_path = os.path.join(out_dir, 'results.csv')
    with open(csv_path, 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['fold'] + class_names + ['UAR', 'WAR'])
        writer.writerows(table_cells(row) for row in rows)
    return markdown_path, csv_path


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m scripts.summarize', description=__doc__.split('\n')[0])
    parser.add_argument('output_dirs', nargs='+', help='output folders of finished runs, one per fold')
    parser.add_argument('--which', choices=('best', 'last'), default='best', help='epoch of each run')
    parser.add_argument('--head', choices=('global', 'local', 'fused'), default='global')
    parser.add_argument('--out-dir', default='', help='where to write (default: log/<DATASET>)')
    return parser.parse_args(argv)


def main(argv=None):
    """Command-line entry point; returns the paths written."""
    args = parse_args(argv)
    paths = write_results(args.output_dirs, args.out_dir or None, args.which, args.head)
    with open(paths[0], encoding='utf-8') as f:
        print(f.read())
    print('written:', *paths)
    return paths


if __name__ == '__main__':
    main()
