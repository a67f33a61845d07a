"""What a run reports: ``metrics.jsonl`` records, RESULT lines and per-class tables.

``metrics.jsonl`` in the output folder holds one JSON object per line:

- ``{"type": "train", "epoch": e, "losses": {"loss": .., "loss_global": .., ...}}`` after every epoch
  of training (means over the epoch and all processes);
- ``{"type": "eval", "epoch": e, "split": "test" | "val", "heads": {head: report}, ...}`` after every
  evaluation, where ``report`` is :func:`utils.metrics.classification_report`'s dict;
- ``{"type": "final", "best": {...}, "last": {...}, ...}`` once, when the run has finished. Its
  presence marks a finished run (``scripts/run_folds.py`` skips such folds); ``best`` and ``last`` hold
  the epoch and the test figures of each head at that epoch.
"""
import csv
import json
import os

from utils.errors import UserError
from utils.files import atomic_write
from utils.metrics import HEADS

METRICS_FILE = 'metrics.jsonl'

# Column names of the published tables for this project's class order (see docs/data.md, section 2).
PUBLISHED_CLASS_HEADERS = {'happiness': 'Happy', 'sadness': 'Sad', 'neutral': 'Neutral', 'anger': 'Angry',
                           'surprise': 'Surprise', 'disgust': 'Disgust', 'fear': 'Fear'}


def class_names_from_prompts(prompts):
    """Short class names from prompts such as ``happiness with cheek raiser ...`` (the part before
    `` with ``)."""
    return [prompt.split(' with ')[0].strip() for prompt in prompts]


def append_record(output_dir, record):
    """Append one JSON object as a line of ``output_dir/metrics.jsonl``."""
    with open(os.path.join(output_dir, METRICS_FILE), 'a', encoding='utf-8') as f:
        f.write(json.dumps(record) + '\n')
        f.flush()
        os.fsync(f.fileno())


def read_records(path):
    """All records of a ``metrics.jsonl`` file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not a JSON object; the message names the file and line. A
            truncated last line (a run killed while writing) is ignored.
    """
    with open(path, encoding='utf-8') as f:
        lines = f.read().split('\n')
    records = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if line_number == len(lines):  # the last line lacks its newline: an interrupted write
                break
            raise UserError(f'{path}:{line_number}: not a JSON object: {error}') from error
    return records


def drop_records_from(output_dir, epoch):
    """Remove the records of epochs >= ``epoch`` and any ``final`` record from ``output_dir/metrics.jsonl``
    (a resumed run trains those epochs again). The file is replaced atomically."""
    path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return
    kept = [record for record in read_records(path)
            if record.get('type') != 'final' and record.get('epoch', -1) < epoch]
    with atomic_write(path, 'w') as f:
        f.writelines(json.dumps(record) + '\n' for record in kept)


def final_record(output_dir):
    """The ``final`` record of a finished run in ``output_dir``, or None (unfinished or not started)."""
    path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return None
    finals = [record for record in read_records(path) if record.get('type') == 'final']
    return finals[-1] if finals else None


def is_better(candidate, best, metric):
    """True if the report ``candidate`` beats ``best`` (None: no best yet) on ``metric`` (UAR/WAR)."""
    return best is None or candidate[metric] > best[metric]


def release_field(report, separator='='):
    """`` UAR_release=63.29`` for a report that has the release's UAR, else ''."""
    value = report.get('UAR_release')
    return '' if value is None else f' UAR_release{separator}{value:.2f}'


def result_lines(heads, prefix='RESULT', suffix=''):
    """Grep-able lines ``RESULT head=global UAR=64.95 WAR=75.41 UAR_release=64.90``, one per head."""
    return [f'{prefix} head={head} UAR={report["UAR"]:.2f} WAR={report["WAR"]:.2f}{release_field(report)}'
            f'{suffix}' for head, report in heads.items()]


def write_predictions(path, evaluation, entries, class_names):
    """Write one CSV row per video of an evaluation, in list order, atomically.

    Columns: ``index`` (position in the list), ``path``, ``label``, ``pred_global``, ``pred_local``,
    ``pred_fused`` (class indices; empty without a local head), then ``prob_<class>``: the global head's
    probabilities (softmax averaged over the test views).

    Args:
        path: the CSV file.
        evaluation: a ``utils.engine.Evaluation`` (``scores``, ``labels``, ``indices``).
        entries: the evaluated dataset's entries (``loader.dataset.entries``), for the paths.
        class_names: K names, for the probability columns.
    """
    predictions = {head: scores.argmax(dim=1).tolist() for head, scores in evaluation.scores.items()}
    global_scores = evaluation.scores['global']
    probabilities = (global_scores / global_scores.sum(dim=1, keepdim=True)).tolist()
    header = (['index', 'path', 'label'] + [f'pred_{head}' for head in HEADS]
              + [f'prob_{name}' for name in class_names])
    with atomic_write(path, 'w') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(header)
        for row, (index, label) in enumerate(zip(evaluation.indices.tolist(), evaluation.labels.tolist())):
            heads = [predictions[head][row] if head in predictions else '' for head in HEADS]
            writer.writerow([index, entries[index].path, label, *heads,
                             *(f'{value:.6f}' for value in probabilities[row])])


def format_recall(value):
    """A recall in percent with two decimals; ``-`` for a class absent from the ground truth."""
    return '-' if value is None else f'{value:.2f}'


def per_class_table(heads, class_names):
    """A plain-text table: one row per head, per-class recall, UAR and WAR (percent)."""
    width = max(9, *(len(name) for name in class_names))
    header = ['head'.ljust(7)] + [name.rjust(width) for name in class_names] + ['UAR'.rjust(6), 'WAR'.rjust(6)]
    rows = [' '.join(header)]
    for head, report in heads.items():
        cells = [head.ljust(7)] + [format_recall(value).rjust(width) for value in report['per_class_recall']]
        rows.append(' '.join(cells + [f'{report["UAR"]:6.2f}', f'{report["WAR"]:6.2f}']))
    return '\n'.join(rows)
