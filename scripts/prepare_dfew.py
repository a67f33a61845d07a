"""Annotation lists for the 5 folds of DFEW, from the official release.

Usage, from the repository root::

    python -m scripts.prepare_dfew --root /data/DFEW --output lists/dfew
    python -m scripts.prepare_dfew --root /data/DFEW --output lists/dfew --clips-dir Clip/original

Expected layout under --root (the official DFEW release)::

    Clip/clip_224x224/<5-digit id>/<id>_<n>.jpg              face clips as frame folders (default
                                                             --clips-dir), or video files
    Clip/original/<5-digit id>.mp4 (.avi, ...)               with --clips-dir Clip/original
    EmoLabel_DataSplit/train(single-labeled)/set_<k>.csv     k = 1..5, rows "video_name,label" (a
    EmoLabel_DataSplit/test(single-labeled)/set_<k>.csv      header line is skipped), labels 1..7 =
                                                             happy, sad, neutral, angry, surprise,
                                                             disgust, fear (class names work too)

Writes set_<k>_train.txt and set_<k>_test.txt into --output: "<path> <num_frames> <label>" lines with
paths relative to --root (set DATA.ROOT to it) and labels in this project's 7-class order. Every clip
must exist; a per-class count table is printed at the end.
"""
import os
import sys

from datasets.preparation import class_index, label_class, parse_preparation_arguments, prepare_lists
from utils.errors import run_command

# DFEW's official labels 1..7, by name.
DFEW_LABELS = ('happy', 'sad', 'neutral', 'angry', 'surprise', 'disgust', 'fear')
NUM_CLASSES = 7
NUM_FOLDS = 5
SPLITS = ('train', 'test')


def clip_and_label(fields):
    """A split-file row ``video_name,label`` -> (clip name, project label)."""
    video_name, label = fields[0], fields[-1]
    clip = f'{int(video_name):05d}' if video_name.isdigit() else video_name  # ids are zero-padded
    return clip, class_index(label_class(label, DFEW_LABELS, 1), NUM_CLASSES)


def split_files(args):
    """``{list name: split file}`` for the 5 folds."""
    return {f'set_{fold}_{split}': os.path.join(args.root, args.split_dir, f'{split}(single-labeled)',
                                                f'set_{fold}.csv')
            for fold in range(1, NUM_FOLDS + 1) for split in SPLITS}


def main(argv=None):
    """Write the DFEW lists; returns the exit status (1 with a message when the layout is wrong)."""
    args = parse_preparation_arguments(argv, 'scripts.prepare_dfew', __doc__, NUM_CLASSES,
                                       clips_dir='Clip/clip_224x224', split_dir='EmoLabel_DataSplit')
    return prepare_lists(split_files(args), args, clip_and_label, NUM_CLASSES)

if __name__ == '__main__':
    sys.exit(run_command(main))
