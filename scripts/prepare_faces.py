"""Turn your own videos into face crops and an annotation list that main.py trains on.

Each INPUT is a video file, a folder of videos (its video files, not its subfolders) or a folder of
frames (one video). Every video goes through the face front end (docs/data.md, section 18): the main
face is followed through the video and cut out as square crops, written as ``DIR/<video file stem>/``
with one JPEG per frame that has the face (``00001.jpg`` is the video's first frame; frames in long
stretches without the face are left out and reported). ``DIR/videos.txt`` lists the written folders as
``<folder> <frames> <label>`` (docs/data.md, section 3; set ``DATA.ROOT`` to DIR).

Labels come from ``--labels``, a CSV of ``video,label`` rows (an optional ``video,label`` header; the
video as its file name or stem; the label a class name such as ``happy`` or ``anger``, or a 0-based
class index, in the class order of docs/data.md, section 2). Without it every video is listed with the
placeholder label 0. ``--test-fraction`` also splits the labelled videos into ``train.txt`` and
``test.txt`` (stratified by class, seeded).

A video that cannot be read, or has no face at all, is reported with its name on stderr; the others
are still processed, and the exit status is 1.

Usage, from the repository root::

    python -m scripts.prepare_faces recordings/ extra.mp4 --output data/mine [--labels labels.csv]
        [--test-fraction 0.2] [--workers 2] [--detect-every 2] [--max-gap 15] [--size 224]
"""
import argparse
import csv
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import cv2
from tqdm import tqdm

from datasets.annotations import AnnotationEntry
from datasets.build import split_validation
from datasets.decoding import VideoReadError, open_video
from datasets.faces import (NoFaceError, add_face_arguments, build_face_detector, crop_chunks, face_settings,
                            follow_face_in_video, frame_file_name)
from datasets.preparation import VIDEO_EXTENSIONS, ListRow, PreparationError, class_count_table, class_index, write_list
from utils.config import ConfigError
from utils.errors import InputFileError, run_command
from utils.files import partial_path

COMMAND_LINE = 'command line'
# JPEG quality of the written crops.
JPEG_QUALITY = 95
# A progress bar appears when a video (or the whole run, with --workers) takes longer than this, in s.
PROGRESS_DELAY = 1.0


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m scripts.prepare_faces', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='+', metavar='INPUT', help='video files, folders of videos, frame folders')
    parser.add_argument('--output', required=True, metavar='DIR', help='folder for the crops and the lists')
    parser.add_argument('--labels', default='', metavar='CSV', help='video,label rows (see above)')
    parser.add_argument('--num-classes', type=int, default=7, choices=(7, 11),
                        help='classes of the labels: 7 (DFEW, FERV39K) or 11 (MAFW); default 7')
    parser.add_argument('--test-fraction', type=float, default=0.0,
                        help='also write train.txt and test.txt, holding out this fraction of each class')
    parser.add_argument('--seed', type=int, default=0, help='seed of the --test-fraction split')
    parser.add_argument('--workers', type=int, default=1, help='videos processed in parallel (processes)')
    add_face_arguments(parser)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f'--workers must be at least 1, got {args.workers}')
    if not 0 <= args.test_fraction < 1 or (args.test_fraction and not args.labels):
        parser.error('--test-fraction needs --labels and a value in [0, 1)')
    args.face_settings = face_settings(args)
    return args


# ----------------------------------------------------------------------------------------------------
# Inputs and labels
# ----------------------------------------------------------------------------------------------------
def video_files(folder):
    """The video files directly inside ``folder``, sorted by name."""
    names = sorted(name for name in os.listdir(folder) if name.lower().endswith(VIDEO_EXTENSIONS))
    return [os.path.join(folder, name) for name in names]


def expand_inputs(inputs):
    """One ``AnnotationEntry`` (label None) per video of the INPUT arguments, located at
    ``command line:<position>``: a folder with video files stands for them, any other path for itself."""
    entries = []
    for position, path in enumerate(inputs, start=1):
        videos = video_files(path) if os.path.isdir(path) else []
        for video in videos or [path]:
            entries.append(AnnotationEntry(video, None, None, COMMAND_LINE, position))
    return entries


def output_name(path):
    """The folder name of a video's crops: the file stem, or the frame folder's own name."""
    name = os.path.basename(os.path.normpath(path))
    return name if os.path.isdir(path) else os.path.splitext(name)[0]


def check_unique_names(entries):
    """Raise PreparationError when two videos would write the same crop folder."""
    seen = {}
    for entry in entries:
        other = seen.setdefault(output_name(entry.path), entry.path)
        if other != entry.path:
            raise PreparationError(f'{other} and {entry.path} would both be written to '
                                   f'{output_name(entry.path)}/: rename one of them')


def parse_label(text, num_classes):
    """A label field: a 0-based class index, or a class name (common spellings accepted)."""
    if text.strip().isdigit():
        if int(text) >= num_classes:
            raise ValueError(f'class index {text} is outside 0..{num_classes - 1}')
        return int(text)
    return class_index(text, num_classes)


def read_labels(path, num_classes):
    """``{video file name or stem: label}`` from a ``video,label`` CSV (docstring of this module).

    Raises:
        InputFileError: no such file. PreparationError: a malformed row, naming ``file:line``.
    """
    if not os.path.isfile(path):
        raise InputFileError(f'label file not found: {path}')
    labels = {}
    with open(path, encoding='utf-8-sig', newline='') as f:
        for line_number, row in enumerate(csv.reader(f), start=1):
            fields = [value.strip() for value in row]
            if not any(fields) or fields[0].startswith('#'):
                continue
            if line_number == 1 and [value.lower() for value in fields] == ['video', 'label']:
                continue
            try:
                if len(fields) != 2:
                    raise ValueError(f'expected "video,label", got {",".join(row)!r}')
                labels[fields[0]] = parse_label(fields[1], num_classes)
            except ValueError as error:
                raise PreparationError(f'{path}:{line_number}: {error}') from error
    return labels


def label_of(path, labels):
    """The label of a video by its file name, else its stem; None when the CSV has neither."""
    name = os.path.basename(os.path.normpath(path))
    return labels.get(name, labels.get(output_name(path)))


# ----------------------------------------------------------------------------------------------------
# One video
# ----------------------------------------------------------------------------------------------------
@dataclass
class VideoResult:
    """What processing one video gave: frames read and written, stretches without the face, time."""
    entry: AnnotationEntry
    num_frames: int = 0
    num_written: int = 0
    absences: list = field(default_factory=list)
    seconds: float = 0.0
    error: str = ''


def write_crops(video, track, folder, size):
    """Write the crops of every frame with a face into ``folder`` (replaced when it exists, and only once
    complete, so an interrupted run leaves no half-written folder under the final name)."""
    partial = partial_path(folder)
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        for indices, crops in crop_chunks(video, track, size):
            for index, crop in zip(indices, crops):
                write_jpeg(os.path.join(partial, frame_file_name(index, len(video))), crop)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)


def write_jpeg(path, image):
    """Write an RGB image as a JPEG of ``JPEG_QUALITY``."""
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise OSError(f'cannot write {path}')


def process_video(entry, output, settings, show_progress):
    """Follow the face of one video and write its crops; errors are returned, not raised."""
    started, result = time.perf_counter(), VideoResult(entry)
    try:
        video = open_video(entry)
        result.num_frames = len(video)
        with tqdm(total=len(video), desc=output_name(entry.path), unit='frame', leave=False,
                  disable=None if show_progress else True, delay=PROGRESS_DELAY) as bar:
            track = follow_face_in_video(video, build_face_detector(settings), settings,
                                         progress=lambda done: bar.update(done - bar.n))
        write_crops(video, track, os.path.join(output, output_name(entry.path)), settings.size)
        result.num_written, result.absences = len(track.face_frames), track.absences
    except (VideoReadError, NoFaceError) as error:
        result.error = str(error)
    result.seconds = time.perf_counter() - started
    return result


def result_lines(result, output):
    """The console lines of a processed video."""
    rate = result.num_frames / max(result.seconds, 1e-9)
    lines = [f'{result.entry.path}: {result.num_frames} frames read, {result.num_written} with a face, '
             f'{result.seconds:.1f} s ({rate:.0f} frames/s) -> {os.path.join(output, output_name(result.entry.path))}']
    for first, last in result.absences:
        lines.append(f'  no face in frames {first + 1}-{last + 1} ({last - first + 1} frames): left out')
    return lines


def process_videos(entries, args):
    """Process every video (in ``args.workers`` processes), printing each result; returns the results."""
    settings, results = args.face_settings, []
    if args.workers == 1:
        for entry in entries:
            results.append(process_video(entry, args.output, settings, show_progress=True))
            report_result(results[-1], args.output)
        return results
    # fresh interpreters, not forks: a fork copies the locks that the parent's threads (decoders, the
    # pool's own feeder) may hold at that moment, and a worker can hang on one
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context('spawn'),
                             initializer=cv2.setNumThreads, initargs=(1,)) as pool:  # one core per worker
        futures = [pool.submit(process_video, entry, args.output, settings, False) for entry in entries]
        for future in tqdm(futures, desc='videos', unit='video', leave=False, disable=None, delay=PROGRESS_DELAY):
            results.append(future.result())
            report_result(results[-1], args.output)
    return results


def report_result(result, output):
    """Print a video's lines on stdout, or its error on stderr."""
    if result.error:
        tqdm.write(f'error: {result.error}', file=sys.stderr)
    else:
        tqdm.write('\n'.join(result_lines(result, output)))
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------------
# Lists
# ----------------------------------------------------------------------------------------------------
def list_rows(results, labels, args):
    """The list rows of the written videos, and the error messages of labelled runs' unlabelled videos."""
    rows, errors = [], []
    for result in results:
        if result.error:
            continue
        label = label_of(result.entry.path, labels) if args.labels else 0
        if label is None:
            errors.append(f'{result.entry.path}: no label in {args.labels}; left out of the lists')
        else:
            rows.append(ListRow(output_name(result.entry.path), result.num_written, label))
    return rows, errors


def split_rows(rows, args):
    """``{list name: rows}``: ``videos``, and ``train`` / ``test`` with ``--test-fraction``."""
    lists = {'videos': rows}
    if args.test_fraction:
        try:
            lists['train'], lists['test'] = split_validation(rows, args.test_fraction, args.seed)
        except ConfigError as error:
            raise PreparationError(f'--test-fraction {args.test_fraction} holds out no video of '
                                   f'{len(rows)}: raise it') from error
    return lists


def write_face_lists(lists, args):
    """Write the lists into ``--output`` and print their per-class table."""
    for name, rows in lists.items():
        write_list(os.path.join(args.output, f'{name}.txt'), rows)
    if args.labels:
        print(class_count_table(lists, args.num_classes))
    else:
        print('no --labels: every video is listed with the placeholder label 0')
    print(f'wrote {", ".join(f"{name}.txt" for name in lists)} to {args.output} (set DATA.ROOT to it)')


def main(argv=None):
    """Command-line entry point; returns the exit status (1 when any video failed or lacks a label)."""
    args = parse_args(argv)
    labels = read_labels(args.labels, args.num_classes) if args.labels else {}
    build_face_detector(args.face_settings)  # a missing dlib or model file stops here, before any video
    entries = expand_inputs(args.inputs)
    check_unique_names(entries)
    os.makedirs(args.output, exist_ok=True)
    results = process_videos(entries, args)
    rows, label_errors = list_rows(results, labels, args)
    for message in label_errors:
        print(f'error: {message}', file=sys.stderr)
    if rows:
        write_face_lists(split_rows(rows, args), args)
    failed = sum(bool(result.error) for result in results)
    print(f'{len(rows)} of {len(entries)} videos listed ({failed} failed, {len(label_errors)} without a label)',
          flush=True)
    return 1 if failed or label_errors else 0


if __name__ == '__main__':
    sys.exit(run_command(main))
