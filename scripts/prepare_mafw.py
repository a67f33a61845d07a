"""Annotation lists for the 5 folds of MAFW (single-expression set, 11 classes), from the official
release.

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

Numeric labels are only accepted with --numeric-labels, the class names in the order of the numbers,
e.g. --numeric-labels anger,disgust,fear,happiness,neutral,sadness,surprise,contempt,anxiety,
helplessness,disappointment --first-label 1.

Writes set_<k>_train.txt and set_<k>_test.txt into --output: "<path> <num_frames> <label>" lines with
paths relative to --root (set DATA.ROOT to it) and labels in this project's 11-class order (use
DATA.NUM_CLASSES 11 and labels/mafw_11_AUE_labels.csv). Every clip must exist; a per-class count table
is printed at the end.
"""
import os
import sys

from datasets.preparation import class_index, label_class, parse_preparation_arguments, prepare_lists
from utils.errors import run_command

NUM_CLASSES = 11
NUM_FOLDS = 5
SPLITS = ('train', 'test')


def split_files(args):
    """``{list name: split file}`` for the 5 folds."""
    return {f'set_{fold}_{split}': os.path.join(args.root, args.split_dir, f'set_{fold}', f'{split}.txt')
            for fold in range(1, NUM_FOLDS + 1) for split in SPLITS}


def main(argv=None):
    """Write the MAFW lists; returns the exit status (1 with a message when the layout is wrong)."""
    args = parse_preparation_arguments(argv, 'scripts.prepare_mafw', __doc__, NUM_CLASSES,
                                       clips_dir='data/frames',
                                       split_dir='Train & Test Set/single/no_caption', numeric_labels=True)

    def clip_and_label(fields):
        """A split-file row ``<clip> <label>`` -> (clip name, project label)."""
        label = label_class(fields[-1], args.numeric_names, args.first_label)
        return fields[0], class_index(label, NUM_CLASSES)

    return prepare_lists(split_files(args), args, clip_and_label, NUM_CLASSES)

if __name__ == '__main__':
    sys.exit(run_command(main))
