"""Build the results table of a benchmark campaign (folds x seeds) from its output folders.

Reads the ``final`` record of each run's ``metrics.jsonl`` and writes ``log/<DATASET>/results.md`` and
``results.csv``: per fold, UAR, UAR_release and WAR as the mean ± standard deviation over seeds; an Avg
row, the mean over folds with the standard deviation over seeds of the per-seed means over folds; the
published figures beside ours with the difference, UAR_release against the published UAR (both computed
the release's way, docs/data.md section 15); how many runs are behind each cell; the runs still missing,
by name; and the per-class recall (means over seeds) in the layout of the official README, over the whole
test list and as the release computed it. Beside them, ``results.png`` draws UAR, UAR_release and WAR per
fold: each seed's figure, the mean ± standard deviation over seeds, and the published figures (the
published UAR on the UAR_release panel, the two being computed the same way).

A run is a folder ``<root>/<dataset>/fold<k>/seed<s>`` (a campaign with ``--seeds``) or
``<root>/<dataset>/fold<k>`` (one seed). Usage, from the repository root::

    python -m scripts.summarize output/dfew                   # every fold<k>[/seed<s>] under it
    python -m scripts.summarize output/dfew/fold1 output/dfew/fold2 ... [--which best|last]
        [--head global|local|fused] [--out-dir log/DFEW]
"""
import argparse
import csv
import glob
import logging
import os
import re
import statistics
from typing import NamedTuple, Optional

from utils.errors import UserError, run_command
from utils.plots import plot_campaign_results
from utils.reporting import PUBLISHED_CLASS_HEADERS, final_record, format_recall

logger = logging.getLogger(__name__)


class SummaryError(UserError, ValueError):
    """Nothing to summarise where the command points; the message names the folder."""


DATASET_TITLES = {'dfew': 'DFEW', 'ferv39k': 'FERV39K', 'mafw': 'MAFW', 'mafw_compound': 'MAFW_COMPOUND',
                  'synthetic': 'SYNTHETIC'}
# The picture beside results.md.
RESULTS_PICTURE = 'results.png'
# Why a benchmark has no published figures, where the table should say so.
UNPUBLISHED = {'mafw_compound': "DK-CLIP was not published on MAFW's 43-class compound protocol."}
METRICS = ('UAR', 'UAR_release', 'WAR')
# Our figure compared with each published one: the release's UAR with the published UAR, WAR with WAR.
COMPARED = ('UAR_release', 'WAR')
# The official release's (UAR, WAR) in percent, one run per fold (docs/data.md, section 14; FERV39K
# has one split). The synthetic benchmark has none.
PUBLISHED = {
    'dfew': {'1': (63.29, 76.21), '2': (63.01, 73.22), '3': (64.21, 75.56), '4': (66.16, 74.48),
             '5': (68.06, 77.57)},
    'ferv39k': {'1': (41.84, 52.37)},
    'mafw': {'1': (37.38, 50.24), '2': (40.24, 53.35), '3': (46.32, 59.36), '4': (47.87, 61.35),
             '5': (43.22, 58.49)},
}
AVERAGE_LABEL = 'Avg'


class Run(NamedTuple):
    """One training run of a campaign: its fold label (``'3'``), seed (None: the config's) and folder."""
    fold: str
    seed: Optional[int]
    output_dir: str


def dataset_title(dataset):
    """The dataset's name as the published tables and ``log/`` folders spell it (``dfew`` -> ``DFEW``)."""
    return DATASET_TITLES.get(dataset, dataset.upper())


def fold_label(output_dir):
    """Row label of a folder: the number at the end of its name (``fold3`` -> ``3``), else the name."""
    name = os.path.basename(os.path.normpath(output_dir))
    match = re.search(r'(\d+)$', name)
    return match.group(1) if match else name


def run_name(run):
    """``fold 3 seed 2`` (``fold 3`` for a run without a seed folder)."""
    return f'fold {run.fold}' + ('' if run.seed is None else f' seed {run.seed}')


def run_from_folder(output_dir):
    """The run an output folder holds: ``.../fold<k>/seed<s>`` or a fold folder (seed None)."""
    match = re.fullmatch(r'seed(\d+)', os.path.basename(os.path.normpath(output_dir)))
    if match:
        return Run(fold_label(os.path.dirname(os.path.normpath(output_dir))), int(match.group(1)), output_dir)
    return Run(fold_label(output_dir), None, output_dir)


def numbered_subfolders(folder, prefix):
    """``{number: path}`` of the subfolders ``<prefix><number>`` of ``folder``."""
    found = {}
    for path in glob.glob(os.path.join(folder, prefix + '*')):
        match = re.fullmatch(prefix + r'(\d+)', os.path.basename(path))
        if match and os.path.isdir(path):
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def campaign_runs(root):
    """The runs of a campaign folder ``<root>/fold<k>[/seed<s>]``: every fold with every seed any fold
    has (so a seed one fold lacks is named as missing there), or the fold folders themselves."""
    folds = numbered_subfolders(root, 'fold')
    if not folds:
        raise SummaryError(f'{root}: no fold<k> folders (and no metrics.jsonl): not a run nor a campaign')
    seeds = sorted({seed for folder in folds.values() for seed in numbered_subfolders(folder, 'seed')})
    if not seeds:
        return [Run(str(fold), None, folder) for fold, folder in folds.items()]
    return [Run(str(fold), seed, os.path.join(folder, f'seed{seed}'))
            for fold, folder in folds.items() for seed in seeds]


def runs_from_paths(paths):
    """Runs named on the command line: run folders (holding ``metrics.jsonl``) or campaign folders."""
    runs = []
    for path in paths:
        is_run = os.path.isfile(os.path.join(path, 'metrics.jsonl'))
        runs += [run_from_folder(path)] if is_run else campaign_runs(path)
    return runs


def read_run_report(run, which, head):
    """The final record and the ``head``'s report at the ``which`` epoch of a run, or (None, None) for
    a run that has not finished.

    Raises:
        ValueError: the run finished without that head; names the folder.
    """
    record = final_record(run.output_dir)
    if record is None:
        return None, None
    heads = record[which]['heads']
    if head not in heads:
        raise SummaryError(f'{run.output_dir}: no {head!r} head in the results (heads: {sorted(heads)})')
    return record, heads[head]


def mean_and_std(values):
    """Mean and sample standard deviation (n - 1) of ``values``: (None, None) without values, std None
    for a single value."""
    values = [float(value) for value in values]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def mean_or_none(values):
    """Mean of the values that are not None; None if there are none."""
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


def metric_values(reports, metric):
    """The ``metric`` of every report; empty when a report lacks it (a run older than the metric)."""
    values = [report.get(metric) for report in reports]
    return [] if None in values else values


def mean_recall(reports, key):
    """Per-class means over the reports of their ``key`` recall list (None where no report has one)."""
    lists = [report[key] for report in reports if report.get(key) is not None]
    return [mean_or_none(column) for column in zip(*lists)]


def fold_row(label, runs, reports, num_classes):
    """One fold's row: mean ± std over its finished runs (seeds) of each metric, and the mean recalls
    (over the whole list, and the release's mean over shards).

    Args:
        label: the fold label.
        runs: the fold's planned runs.
        reports: ``{run: head report}`` of the finished runs.
        num_classes: length of the recall column (all None for a fold without results).
    """
    finished = [reports[run] for run in runs if run in reports]
    row = {'label': label, 'runs': len(finished), 'planned': len(runs)}
    for name, key in (('recall', 'per_class_recall'), ('recall_release', 'per_class_recall_release')):
        row[name] = mean_recall(finished, key) or [None] * num_classes
    row.update({metric: mean_and_std(metric_values(finished, metric)) for metric in METRICS})
    return row


def seed_means(runs, reports, metric):
    """``{seed: mean over folds of metric}`` for each seed finished in every fold that has results."""
    folds = {run.fold for run in runs if run in reports}
    by_seed = {}
    for run in runs:
        if run in reports and reports[run].get(metric) is not None:
            by_seed.setdefault(run.seed, {})[run.fold] = reports[run][metric]
    return {seed: statistics.fmean(values.values()) for seed, values in by_seed.items()
            if set(values) == folds}


def average_row(fold_rows, runs, reports):
    """The Avg row: the mean over folds of the fold means, ± the std over seeds of the per-seed means
    over folds (the seed-to-seed spread of the figure a paper reports)."""
    rows = [row for row in fold_rows if row['runs']]
    average = {'label': AVERAGE_LABEL, 'runs': sum(row['runs'] for row in rows),
               'planned': sum(row['planned'] for row in fold_rows)}
    for name in ('recall', 'recall_release'):
        average[name] = [mean_or_none(column) for column in zip(*(row[name] for row in rows))]
    for metric in METRICS:
        means = [row[metric][0] for row in rows]
        mean = None if None in means else mean_or_none(means)
        average[metric] = (mean, mean_and_std(seed_means(runs, reports, metric).values())[1])
    return average


def attach_published(rows, dataset):
    """Add each row's published (UAR, WAR) (None where there is none); Avg gets the mean of the
    published figures of the folds with results, so that it compares like with like."""
    published = PUBLISHED.get(dataset, {})
    for row in rows:
        row['published'] = published.get(row['label'])
    folds = [row['published'] for row in rows if row['label'] != AVERAGE_LABEL and row['runs']]
    if rows and rows[-1]['label'] == AVERAGE_LABEL:
        complete = folds and all(folds)
        rows[-1]['published'] = tuple(map(statistics.fmean, zip(*folds))) if complete else None
    return rows


def summary_rows(runs, reports, dataset, num_classes):
    """The fold rows in plan order, then the Avg row, each with its published figures."""
    labels = list(dict.fromkeys(run.fold for run in runs))
    rows = [fold_row(label, [run for run in runs if run.fold == label], reports, num_classes)
            for label in labels]
    rows.append(average_row(rows, runs, reports))
    return attach_published(rows, dataset)


def format_mean_std(mean_std):
    """``63.10 ± 0.45``; the mean alone for one run; ``-`` for none."""
    mean, std = mean_std
    if mean is None:
        return '-'
    return f'{mean:.2f}' if std is None else f'{mean:.2f} ± {std:.2f}'


def format_difference(ours, published):
    """``+0.45`` / ``-1.01``: ours minus published; ``-`` when either is missing."""
    return '-' if ours is None or published is None else f'{ours - published:+.2f}'


def summary_cells(row):
    """The formatted cells of a summary row: label, runs, UAR, UAR_release, WAR, published UAR / WAR,
    differences (UAR_release and WAR minus the published figures)."""
    published = row['published'] or (None, None)
    means = [row[metric][0] for metric in COMPARED]
    return ([row['label'], f'{row["runs"]}/{row["planned"]}']
            + [format_mean_std(row[metric]) for metric in METRICS]
            + [format_recall(value) for value in published]
            + [format_difference(mean, value) for mean, value in zip(means, published)])


def recall_cells(row, recall='recall', uar='UAR'):
    """The formatted cells of a per-class row: label, per-class recalls, UAR, WAR (means)."""
    values = row[recall] + [row[uar][0], row['WAR'][0]]
    return [row['label']] + [format_recall(value) for value in values]


def markdown_rows(headers, rows):
    """A markdown table: header, alignment row, then the rows' cells."""
    lines = ['| ' + ' | '.join(headers) + ' |', '|:-----|' + ':-----:|' * (len(headers) - 1)]
    return lines + ['| ' + ' | '.join(cells) + ' |' for cells in rows]


def missing_lines(missing):
    """The ``Missing runs`` paragraph naming each unfinished run and its folder (none: empty)."""
    if not missing:
        return []
    named = '; '.join(f'{run_name(run)} (`{run.output_dir}`)' for run in missing)
    return ['', f'Missing runs ({len(missing)}, not finished): {named}.']


def markdown_report(title, class_names, rows, missing, description):
    """``results.md``: the campaign table, the missing runs, and the per-class tables."""
    headers = ['Fold', 'Runs', 'UAR', 'UAR_release', 'WAR', 'Published UAR', 'Published WAR', 'Δ UAR_release',
               'Δ WAR']
    class_headers = ['Fold'] + [PUBLISHED_CLASS_HEADERS.get(name, name) for name in class_names]
    lines = [f'### {title}', '', description, '']
    lines += markdown_rows(headers, [summary_cells(row) for row in rows])
    lines += missing_lines(missing)
    lines += ['', 'Per-class recall, UAR and WAR in percent over the whole test list, means over seeds:', '']
    lines += markdown_rows(class_headers + ['UAR', 'WAR'], [recall_cells(row) for row in rows])
    lines += ['', 'The same as the release computed it (the layout of the published per-class tables): each '
              'recall and UAR the mean over the test list\'s stride shards, means over seeds:', '']
    lines += markdown_rows(class_headers + ['UAR_release', 'WAR'],
                           [recall_cells(row, 'recall_release', 'UAR_release') for row in rows])
    return '\n'.join(lines) + '\n'


def csv_rows(class_names, rows):
    """``results.csv``: a header, then one row per fold and the Avg row (numbers, '' where none)."""
    def number(value):
        return '' if value is None else f'{value:.2f}'

    header = (['fold', 'runs', 'planned_runs']
              + [f'{metric}_{part}' for metric in METRICS for part in ('mean', 'std')]
              + ['published_UAR', 'published_WAR', 'delta_UAR_release', 'delta_WAR'] + class_names
              + [f'{name}_release' for name in class_names])
    table = [header]
    for row in rows:
        published = row['published'] or (None, None)
        means = [row[metric][0] for metric in COMPARED]
        deltas = [None if None in (mean, value) else mean - value for mean, value in zip(means, published)]
        table.append([row['label'], row['runs'], row['planned']]
                     + [number(value) for metric in METRICS for value in row[metric]]
                     + [number(value) for value in (*published, *deltas, *row['recall'], *row['recall_release'])])
    return table


def picture_values(runs, reports, rows):
    """What :func:`utils.plots.plot_campaign_results` draws: metric -> row label -> per-seed values (the
    Avg row: each seed's mean over folds, as in the table), and metric -> row label -> published figure."""
    values = {}
    for metric in METRICS:
        by_fold = {row['label']: [reports[run][metric] for run in runs if run.fold == row['label']
                                  and run in reports and reports[run].get(metric) is not None]
                   for row in rows[:-1]}
        by_fold[AVERAGE_LABEL] = list(seed_means(runs, reports, metric).values())
        values[metric] = by_fold
    published = {metric: {row['label']: row['published'] and row['published'][position] for row in rows}
                 for metric, position in (('UAR_release', 0), ('WAR', 1))}
    return values, published


def write_results_picture(path, runs, reports, rows, title, which, head):
    """``results.png``: per fold, each seed's UAR, UAR_release and WAR, their mean ± std, and the
    published figures (the published UAR beside UAR_release: both the mean of the shards' UARs)."""
    values, published = picture_values(runs, reports, rows)
    note = 'published UAR marked on UAR_release (both computed per shard)' if any(
        value is not None for value in published['WAR'].values()) else 'no published figures'
    return plot_campaign_results(values, published, [row['label'] for row in rows], path,
                                 f'{title}: {head} head, {which} epoch; {note}')


def table_description(which, head, dataset):
    """The paragraph above the table: what each cell is."""
    published = ('Published: the official release, one run per fold (Avg: over the same folds); '
                 'Δ: ours minus published, UAR_release against the published UAR.' if dataset in PUBLISHED
                 else f'No published figures for this dataset. {UNPUBLISHED.get(dataset, "")}'.strip())
    return (f'UAR, UAR_release and WAR in percent of the {head} head at the {which} epoch of each run. UAR: '
            f'over the whole test list; UAR_release: the mean of the UARs of the test list\'s stride shards, '
            f'as the release computed its published UAR (docs/data.md, section 15). Fold rows: mean ± '
            f'standard deviation (n - 1) over seeds. Avg: mean over folds ± standard deviation over seeds of '
            f'the per-seed mean over folds (seeds finished in every fold). Runs: finished / planned. {published}')


def write_campaign_results(runs, out_dir=None, which='best', head='global'):
    """Write ``results.md``, ``results.csv`` and the picture ``results.png`` for a campaign's runs
    (finished or not).

    Args:
        runs: the planned runs (``Run``), in row order; unfinished ones are named as missing.
        out_dir: where to write; default ``log/<DATASET>``.
        which: ``best`` (the selected epoch, as published) or ``last``.
        head: ``global`` (as published), ``local`` or ``fused``.

    Returns:
        (path of results.md, path of results.csv); ``results.png`` is written beside them.

    Raises:
        ValueError: no run has finished (nothing to tabulate), or a finished run lacks the head.
    """
    records, reports = {}, {}
    for run in runs:
        records[run], report = read_run_report(run, which, head)
        if report is not None:
            reports[run] = report
    finished = [records[run] for run in runs if run in reports]
    if not finished:
        raise SummaryError('no finished run among: ' + ', '.join(run.output_dir for run in runs))
    class_names, dataset = finished[0]['class_names'], finished[0]['dataset']
    rows = summary_rows(runs, reports, dataset, len(class_names))
    missing = [run for run in runs if run not in reports]
    out_dir = out_dir or os.path.join('log', dataset_title(dataset))
    os.makedirs(out_dir, exist_ok=True)
    markdown_path, csv_path = os.path.join(out_dir, 'results.md'), os.path.join(out_dir, 'results.csv')
    with open(markdown_path, 'w', encoding='utf-8') as f:
        f.write(markdown_report(dataset_title(dataset), class_names, rows, missing,
                                table_description(which, head, dataset)))
    with open(csv_path, 'w', newline='', encoding='utf-8') as f:
        csv.writer(f).writerows(csv_rows(class_names, rows))
    write_results_picture(os.path.join(out_dir, RESULTS_PICTURE), runs, reports, rows, dataset_title(dataset),
                          which, head)
    return markdown_path, csv_path


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m scripts.summarize', description=__doc__.split('\n')[0])
    parser.add_argument('paths', nargs='+',
                        help='run folders, or campaign folders holding fold<k>[/seed<s>] runs')
    parser.add_argument('--which', choices=('best', 'last'), default='best', help='epoch of each run')
    parser.add_argument('--head', choices=('global', 'local', 'fused'), default='global')
    parser.add_argument('--out-dir', default='', help='where to write (default: log/<DATASET>)')
    return parser.parse_args(argv)


def main(argv=None):
    """Command-line entry point; prints the table and returns the paths written."""
    args = parse_args(argv)
    paths = write_campaign_results(runs_from_paths(args.paths), args.out_dir or None, args.which, args.head)
    with open(paths[0], encoding='utf-8') as f:
        print(f.read())
    print('written:', *paths, os.path.join(os.path.dirname(paths[0]), RESULTS_PICTURE))
    return paths


if __name__ == '__main__':
    run_command(main)
