"""Annotation lists for the 5 folds of MAFW, from the official release: the single-expression set
(11 classes) and the compound-expression set (43 classes).

Usage, from the repository root::

    python -m scripts.prepare_mafw --root /data/MAFW --output lists/mafw
    python -m scripts.prepare_mafw --root /data/MAFW --output lists/mafw --clips-dir data/clips

Expected layout under --root (the official MAFW release)::

    data/frames/<id>/*.jpg                                   frame folders (default --clips-dir), or
    data/clips/<id>.mp4                                      video files: --clips-dir data/clips
    Train & Test Set/single/no_caption/set_<k>/train.txt     k = 1..5; lines "<id>.mp4 <label>" (or
    Train & Test Set/single/no_caption/set_<k>/test.txt      "<id> <label>", comma or space separated)
                                                             with class names: anger, disgust, fear,
                                                             happiness, neutral, sadness, surprise,
                                                             contempt, anxiety, helplessness,
                                                             disappointment
    Train & Test Set/compound/no_caption/set_<k>/train.txt   the compound set, optional
    Train & Test Set/compound/no_caption/set_<k>/test.txt    (--compound-split-dir); the same lines
                                                             with compound class names as MAFW writes
                                                             them: a single class or 2-3 of them joined
                                                             by "_" (anger_disgust, fear_surprise_anxiety)

Numeric labels are only accepted with --numeric-labels, the class names in the order of the numbers,
e.g. --numeric-labels anger,disgust,fear,happiness,neutral,sadness,surprise,contempt,anxiety,
helplessness,disappointment --first-label 1.

Writes set_<k>_train.txt and set_<k>_test.txt into --output: "<path> <num_frames> <label>" lines with
paths relative to --root (set DATA.ROOT to it) and labels in this project's 11-class order (use
DATA.NUM_CLASSES 11 and labels/mafw_11_AUE_labels.csv). When the compound split exists, it also writes
compound/set_<k>_train.txt and compound/set_<k>_test.txt with the 43 compound classes in the fixed order
of datasets/mafw_compound.py (the 11 single classes first, in this project's order, then the 32
combinations; use configs/mafw_compound/, DATA.NUM_CLASSES 43 and labels/mafw_43_compound_AUE_labels.csv
or labels/mafw_43_compound_names.csv). --numeric-labels applies to the single set only. Every clip must
exist; a per-class count table of each set is printed at the end.
"""
import os
import sys

from datasets.mafw_compound import COMPOUND_CLASSES, NUM_COMPOUND_CLASSES, compound_index
from datasets.preparation import class_index, label_class, parse_preparation_arguments, prepare_lists
from utils.errors import run_command

NUM_CLASSES = 11
NUM_FOLDS = 5
SPLITS = ('train', 'test')
COMPOUND_SPLIT_DIR = os.path.join('Train & Test Set', 'compound', 'no_caption')
# Subfolder of --output for the compound lists.
COMPOUND_OUTPUT = 'compound'


def split_files(root, split_dir):
    """``{list name: split file}`` for the 5 folds of one set."""
    return {f'set_{fold}_{split}': os.path.join(root, split_dir, f'set_{fold}', f'{split}.txt')
            for fold in range(1, NUM_FOLDS + 1) for split in SPLITS}


def add_compound_argument(parser):
    """Add ``--compound-split-dir`` to the preparation scripts' options."""
    parser.add_argument('--compound-split-dir', default=COMPOUND_SPLIT_DIR,
                        help=f'folder of the compound set\'s split files, relative to --root (default: '
                             f'{COMPOUND_SPLIT_DIR}); skipped with a note when absent')


def compound_clip_and_label(fields):
    """A compound split-file row ``<clip> <compound label>`` -> (clip name, index among the 43)."""
    return fields[0], compound_index(fields[-1])


def prepare_compound_lists(args):
    """Write the compound lists into ``<output>/compound`` when the compound split exists; exit status."""
    if not os.path.isdir(os.path.join(args.root, args.compound_split_dir)):
        print(f'no compound split at {os.path.join(args.root, args.compound_split_dir)}: '
              'compound lists not written')
        return 0
    return prepare_lists(split_files(args.root, args.compound_split_dir), args, compound_clip_and_label,
                         NUM_COMPOUND_CLASSES, COMPOUND_CLASSES, os.path.join(args.output, COMPOUND_OUTPUT))


def main(argv=None):
    """Write the MAFW lists, single and compound; returns the exit status (2 with a message when the
    layout is wrong)."""
    args = parse_preparation_arguments(argv, 'scripts.prepare_mafw', __doc__, NUM_CLASSES,
                                       clips_dir='data/frames',
                                       split_dir='Train & Test Set/single/no_caption', numeric_labels=True,
                                       add_arguments=add_compound_argument)

    def clip_and_label(fields):
        """A split-file row ``<clip> <label>`` -> (clip name, project label)."""
        label = label_class(fields[-1], args.numeric_names, args.first_label)
        return fields[0], class_index(label, NUM_CLASSES)

    status = prepare_lists(split_files(args.root, args.split_dir), args, clip_and_label, NUM_CLASSES)
    return status or prepare_compound_lists(args)


if __name__ == '__main__':
    sys.exit(run_command(main))
