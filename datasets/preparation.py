"""Shared parts of the preparation scripts (``scripts/prepare_*.py``): from a licensee's copy of a
dataset to annotation lists in this project's format and class order.

Classes are always mapped by NAME into the project order (0 happiness, 1 sadness, 2 neutral, 3 anger,
4 surprise, 5 disgust, 6 fear, then MAFW's 7 contempt, 8 anxiety, 9 helplessness, 10 disappointment);
common spellings (happy, sad, angry, surprised, ...) are accepted.
"""
import argparse
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass

from datasets.decoding import count_frames, frame_names, orders_disagree
from utils.errors import USER_ERROR_EXIT_STATUS, UserError
from utils.files import atomic_write

logger = logging.getLogger(__name__)

PROJECT_CLASSES = ('happiness', 'sadness', 'neutral', 'anger', 'surprise', 'disgust', 'fear',
                   'contempt', 'anxiety', 'helplessness', 'disappointment')
CLASS_ALIASES = {
    'happy': 'happiness', 'joy': 'happiness', 'sad': 'sadness', 'angry': 'anger',
    'surprised': 'surprise', 'disgusted': 'disgust', 'fearful': 'fear', 'scared': 'fear',
    'contemptuous': 'contempt', 'anxious': 'anxiety', 'helpless': 'helplessness',
    'disappointed': 'disappointment',
}
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.mov', '.webm', '.flv', '.mpg', '.mpeg')
# Missing clips named in the error before "...".
MAX_LISTED_MISSING = 10


class PreparationError(UserError, ValueError):
    """The dataset on disk does not match what the script expects; the message says where."""


@dataclass(frozen=True)
class ListRow:
    """One line of an output list: clip path relative to the dataset root, frames, project label."""
    path: str
    num_frames: int
    label: int


def canonical_class(name):
    """The project's name for a class name or alias (case-insensitive), or None if unknown."""
    key = name.strip().lower()
    key = CLASS_ALIASES.get(key, key)
    return key if key in PROJECT_CLASSES else None


def class_index(name, num_classes):
    """The project index of a class name; ValueError for unknown names or classes beyond K."""
    canonical = canonical_class(name)
    if canonical is None or PROJECT_CLASSES.index(canonical) >= num_classes:
        known = ', '.join(PROJECT_CLASSES[:num_classes])
        raise ValueError(f'unknown class name {name!r} (known: {known} and common spellings)')
    return PROJECT_CLASSES.index(canonical)


def numeric_label_class(text, numeric_names, first_label):
    """The class name of a numeric label: ``numeric_names[int(text) - first_label]``."""
    if numeric_names is None:
        raise ValueError(f'numeric label {text!r}: say which class each number means with '
                         f'--numeric-labels (class names in the order of the numbers)')
    position = int(text) - first_label
    if not 0 <= position < len(numeric_names):
        raise ValueError(f'label {text} is outside {first_label}..{first_label + len(numeric_names) - 1}')
    return numeric_names[position]


def label_class(text, numeric_names, first_label):
    """The class name a label field stands for: itself, or via ``numeric_label_class``."""
    return numeric_label_class(text, numeric_names, first_label) if text.strip().isdigit() else text


def read_split_rows(path):
    """Rows of an official split file: ``(line_number, fields)``.

    Fields are comma-separated when the line has a comma, else whitespace-separated. Blank lines and
    ``#`` comments are skipped, and so is a first line without any digit: a header such as
    ``video_name,label`` (every data line names a clip id).
    """
    if not os.path.isfile(path):
        raise PreparationError(f'split file not found: {path}')
    rows, first = [], True
    with open(path, encoding='utf-8-sig') as f:
        for line_number, text in enumerate(f, start=1):
            text = text.strip()
            if not text or text.startswith('#'):
                continue
            fields = [field.strip() for field in text.split(',')] if ',' in text else text.split()
            is_header = first and not any(character.isdigit() for character in text)  # no clip id
            first = False
            if not is_header:
                rows.append((line_number, fields))
    return rows


def locate_clip(root, clips_dir, name):
    """Find a clip under ``root/clips_dir``: a frame folder ``name`` (or ``name`` without its video
    extension), the video file ``name``, or ``name`` plus a video extension.

    Returns:
        str or None: the path relative to ``root``, None when nothing exists.
    """
    stem, extension = os.path.splitext(name)
    stem = stem if extension.lower() in VIDEO_EXTENSIONS else name
    candidates = [name, stem] if stem != name else [name]
    candidates += [stem + extension for extension in VIDEO_EXTENSIONS]
    for candidate in candidates:
        relative = os.path.normpath(os.path.join(clips_dir, candidate))
        if os.path.exists(os.path.join(root, relative)):
            return relative
    return None


class ClipCounter:
    """Frame counts of clips (real image files of a folder, decord's length of a video), cached:
    DFEW and MAFW name every clip in 5 folds. Also notes the frame folders whose names sort differently
    as strings and as numbers (``unpadded``), where ``DATA.FRAME_ORDER`` decides the frame order."""

    def __init__(self, root):
        self.root = root
        self.counts = {}
        self.unpadded = []

    def __call__(self, relative_path):
        if relative_path not in self.counts:
            path = os.path.join(self.root, relative_path)
            self.counts[relative_path] = count_frames(path) or 0
            if os.path.isdir(path) and orders_disagree(frame_names(path)):
                self.unpadded.append(relative_path)
        return self.counts[relative_path]


def frame_order_report(unpadded, num_clips):
    """What the lists' users must know about the frame names: one line for ``print``."""
    if not unpadded:
        return 'frame names sort the same as strings and as numbers: DATA.FRAME_ORDER makes no difference'
    return (f'warning: in {len(unpadded)} of {num_clips} clips the frame names sort differently as strings '
            f'and as numbers (not zero-padded; first: {unpadded[0]}). This project reads them in number '
            f'order (DATA.FRAME_ORDER natural); the release sorted them as strings (DATA.FRAME_ORDER '
            f'lexicographic): choose the key that matches how your frames were meant to be read.')


def rows_from_split(split_file, args, clip_and_label, counter, missing):
    """The list rows of one official split file.

    Args:
        split_file: the split file.
        args: the parsed options (``root``, ``clips_dir``).
        clip_and_label: ``fields -> (clip name, project label)`` for the dataset; raises ValueError.
        counter: a ``ClipCounter``.
        missing: list that receives ``(split file, line, clip name)`` of clips not on disk.

    Raises:
        PreparationError: a malformed line or an unknown label, naming ``file:line``.
    """
    rows = []
    for line_number, fields in read_split_rows(split_file):
        try:
            name, label = clip_and_label(fields)
        except (ValueError, IndexError) as error:
            raise PreparationError(f'{split_file}:{line_number}: {error}') from error
        relative = locate_clip(args.root, args.clips_dir, name)
        if relative is None:
            missing.append((split_file, line_number, name))
        else:
            rows.append(ListRow(relative, counter(relative), label))
    return rows


def prepare_lists(split_files, args, clip_and_label, num_classes, class_names=None, output=None):
    """Build, check and write the lists of ``{list name: split file}``; returns the exit status.

    Every clip must exist (else an error listing the missing ones, unless ``--skip-missing``); the
    lists go to ``output`` (default ``args.output``) and a per-class count table is printed, its rows
    named by ``class_names`` (default: the project's first ``num_classes`` classes).
    """
    counter, missing = ClipCounter(args.root), []
    try:
        lists = {name: rows_from_split(path, args, clip_and_label, counter, missing)
                 for name, path in split_files.items()}
        if missing and not args.skip_missing:
            raise missing_clips_error(missing, os.path.join(args.root, args.clips_dir))
    except PreparationError as error:
        print(f'error: {error}', file=sys.stderr)
        return USER_ERROR_EXIT_STATUS
    if missing:
        print(f'left out {len(missing)} clips that are not on disk (--skip-missing)')
    write_lists(lists, output or args.output, num_classes, class_names)
    print(frame_order_report(counter.unpadded, len(counter.counts)))
    return 0


def missing_clips_error(missing, clips_dir):
    """A ``PreparationError`` listing ``(split file, line, clip name)`` entries whose clip is absent."""
    listed = '\n'.join(f'  {path}:{line}: {name}' for path, line, name in missing[:MAX_LISTED_MISSING])
    more = '\n  ...' if len(missing) > MAX_LISTED_MISSING else ''
    return PreparationError(f'{len(missing)} clips named in the split files are not under {clips_dir} '
                            f'(as a frame folder or a video file):\n{listed}{more}\n'
                            f'(--skip-missing leaves them out instead)')


def write_list(path, rows):
    """Write rows as ``<path> <num_frames> <label>`` lines, atomically."""
    with atomic_write(path) as f:
        f.writelines(f'{row.path} {row.num_frames} {row.label}\n' for row in rows)


def class_count_table(lists, num_classes, class_names=None):
    """A per-class count table of ``{list name: rows}``, one column per list; rows named by
    ``class_names`` (default: the project's classes)."""
    class_names = class_names or PROJECT_CLASSES
    label_width = max(20, *(len(f'{index} {name} ') for index, name in enumerate(class_names[:num_classes])))
    names = list(lists)
    counts = {name: Counter(row.label for row in rows) for name, rows in lists.items()}
    width = max(12, *(len(name) for name in names))
    lines = ['class'.ljust(label_width) + ''.join(name.rjust(width + 1) for name in names)]
    for index in range(num_classes):
        label = f'{index} {class_names[index]}'.ljust(label_width)
        lines.append(label + ''.join(str(counts[name][index]).rjust(width + 1) for name in names))
    lines.append('total'.ljust(label_width) + ''.join(str(len(lists[name])).rjust(width + 1) for name in names))
    return '\n'.join(lines)


def _add_arguments(parser, clips_dir, split_dir, numeric_labels):
    parser.add_argument('--root', required=True, help='the dataset folder (becomes DATA.ROOT)')
    parser.add_argument('--output', required=True, help='folder for the annotation lists')
    parser.add_argument('--clips-dir', default=clips_dir,
                        help=f'folder of the frame folders or video files, relative to --root '
                             f'(default: {clips_dir})')
    parser.add_argument('--split-dir', default=split_dir,
                        help=f'folder of the official split files, relative to --root (default: {split_dir})')
    parser.add_argument('--skip-missing', action='store_true',
                        help='leave out clips that are not on disk (default: stop with an error)')
    if numeric_labels:
        parser.add_argument('--numeric-labels', default=None,
                            help='comma-separated class names in the order of the numeric labels of '
                                 'the split files, e.g. anger,disgust,fear,happiness,neutral,sadness,surprise')
        parser.add_argument('--first-label', type=int, default=0, choices=(0, 1),
                            help='the number of the first class of --numeric-labels (default: 0)')


def parse_preparation_arguments(argv, module, description, num_classes, clips_dir, split_dir,
                                numeric_labels=False, add_arguments=None):
    """The command line of a preparation script.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).
        module: the script's module name, e.g. ``scripts.prepare_dfew`` (for the usage line).
        description: the --help text (the script's docstring, which states the expected layout).
        num_classes: K of the dataset (checks ``--numeric-labels``).
        clips_dir: default ``--clips-dir``, relative to ``--root``.
        split_dir: default ``--split-dir``, relative to ``--root``.
        numeric_labels: offer ``--numeric-labels`` / ``--first-label``.
        add_arguments: a function that adds the script's own options to the parser, or None.

    Returns:
        argparse.Namespace: with ``numeric_names``, the canonical class names of the numeric labels
        (None when not given).
    """
    parser = argparse.ArgumentParser(prog=f'python -m {module}', description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser, clips_dir, split_dir, numeric_labels)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    args.numeric_names, args.first_label = None, getattr(args, 'first_label', 0)
    if getattr(args, 'numeric_labels', None) is not None:
        try:
            args.numeric_names = parse_numeric_labels(args.numeric_labels, num_classes)
        except PreparationError as error:
            parser.error(str(error))
    return args


def write_lists(lists, output, num_classes, class_names=None):
    """Write ``{name: rows}`` as ``output/<name>.txt`` and print the per-class summary (rows named by
    ``class_names``, default the project's classes)."""
    os.makedirs(output, exist_ok=True)
    for name, rows in lists.items():
        write_list(os.path.join(output, f'{name}.txt'), rows)
    print(class_count_table(lists, num_classes, class_names))
    print(f'wrote {len(lists)} lists to {output}')


def parse_numeric_labels(text, num_classes):
    """``--numeric-labels`` -> a tuple of canonical class names (None when not given).

    Raises:
        PreparationError: an unknown class name.
    """
    if text is None:
        return None
    names = [name for name in text.split(',') if name.strip()]
    try:
        return tuple(PROJECT_CLASSES[class_index(name, num_classes)] for name in names)
    except ValueError as error:
        raise PreparationError(f'--numeric-labels: {error}') from error
