"""Annotation lists for FERV39K's train / test split, from the official release.

Usage, from the repository root::

    python -m scripts.prepare_ferv39k --root /data/FERV39K --output lists/ferv39k

Expected layout under --root (the official FERV39K release)::

    2_ClipsforFaceCrop/<Scene>/<Class>/<id>/*.jpg     frame folders (default --clips-dir), or video
                                                      files <Scene>/<Class>/<id>.mp4 under --clips-dir
    4_setups/All_scenes/train_All.csv                 one clip per line: its path <Scene>/<Class>/<id>
    4_setups/All_scenes/test_All.csv                  and its label (a class name or a number), space-
                                                      or comma-separated

The class of each clip is read from the <Class> folder of its path (Angry, Disgust, Fear, Happy,
Neutral, Sad, Surprise) and checked against the label column: a class name must agree, and each
number must stand for one class throughout (public lists number the classes differently, e.g.
alphabetically, so a number is never trusted on its own). Paths without a class folder need class-name
labels or --numeric-labels.

Writes train.txt and test.txt into --output: "<path> <num_frames> <label>" lines with paths relative
to --root (set DATA.ROOT to it) and labels in this project's 7-class order. Every clip must exist; a
per-class count table is printed at the end.
"""
import os
import sys

from datasets.preparation import (canonical_class, class_index, label_class, parse_preparation_arguments,
                                  prepare_lists)
from utils.errors import run_command

NUM_CLASSES = 7
SPLIT_FILES = {'train': 'train_All.csv', 'test': 'test_All.csv'}


def class_from_path(path):
    """The class named by a folder of ``path`` (``<Scene>/<Class>/<id>``), or None."""
    for part in reversed(os.path.normpath(path).split(os.sep)[:-1]):
        if canonical_class(part) is not None:
            return canonical_class(part)
    return None


class FervLabels:
    """``fields -> (clip path, project label)``, with the class taken from the path and checked.

    Args:
        numeric_names: class names of the numeric labels (``--numeric-labels``), or None.
        first_label: the number of the first of them.
    """

    def __init__(self, numeric_names, first_label):
        self.numeric_names = numeric_names
        self.first_label = first_label
        self.number_classes = {}  # numeric label -> the class it was first seen with

    def _check_number(self, number, path_class):
        known = self.number_classes.setdefault(number, path_class)
        if known != path_class:
            raise ValueError(f'label {number} stands for {known} on an earlier line but this clip is '
                             f'in a {path_class} folder')

    def __call__(self, fields):
        path, label = fields[0], fields[-1]
        path_class = class_from_path(path)
        if label.isdigit() and self.numeric_names is None:
            if path_class is None:
                raise ValueError(f'numeric label {label} and no class folder in {path!r}: pass '
                                 f'--numeric-labels')
            self._check_number(label, path_class)
            return path, class_index(path_class, NUM_CLASSES)
        label_name = canonical_class(label_class(label, self.numeric_names, self.first_label))
        if path_class is not None and label_name != path_class:
            raise ValueError(f'label {label!r} disagrees with the class folder of {path!r}')
        return path, class_index(label_name or label, NUM_CLASSES)


def main(argv=None):
    """Write the FERV39K lists; returns the exit status (1 with a message when the layout is wrong)."""
    args = parse_preparation_arguments(argv, 'scripts.prepare_ferv39k', __doc__, NUM_CLASSES,
                                       clips_dir='2_ClipsforFaceCrop', split_dir='4_setups/All_scenes',
                                       numeric_labels=True)
    split_files = {name: os.path.join(args.root, args.split_dir, file)
                   for name, file in SPLIT_FILES.items()}
    return prepare_lists(split_files, args, FervLabels(args.numeric_names, args.first_label), NUM_CLASSES)

if __name__ == '__main__':
    sys.exit(run_command(main))
