"""Annotation lists: one video per line, ``<path> <num_frames> <label>`` or ``<path> <label>``.

The path may contain spaces: the last two fields (or the last one) are the numbers, the rest is the
path. ``#`` starts a comment line; blank lines are ignored. Relative paths are joined to ``DATA.ROOT``.
Every malformed line is an error that names the list file and the line number.
"""
import logging
import os
from dataclasses import dataclass

from datasets.decoding import count_frames
from utils.errors import InputFileError, UserError

logger = logging.getLogger(__name__)

# Videos with fewer frames than this are skipped (the release dropped them silently).
MIN_VIDEO_FRAMES = 3

LINE_FORMATS = "'<path> <num_frames> <label>' or '<path> <label>'"


class AnnotationError(UserError, ValueError):
    """A malformed annotation list; the message names the list file and line."""


@dataclass(frozen=True)
class AnnotationEntry:
    """One video of an annotation list.

    Attributes:
        path: the frame folder or video file, joined to ``DATA.ROOT`` when relative.
        num_frames: the list's frame count (informational), None for two-field lines.
        label: the 0-based class index.
        list_file: the annotation list the entry comes from.
        line_number: its 1-based line in that list.
    """
    path: str
    num_frames: int | None
    label: int
    list_file: str
    line_number: int

    @property
    def location(self):
        """``list_file:line_number``, for error messages."""
        return f'{self.list_file}:{self.line_number}'


def _parse_int(text):
    try:
        return int(text)
    except ValueError:
        return None


def _parse_float(text):
    try:
        return float(text)
    except ValueError:
        return None


def parse_annotation_line(text):
    """Split one list line into ``(path, num_frames, label)``.

    Args:
        text: the line without its newline.

    Returns:
        ``None`` for blank and comment lines, else ``(path, num_frames or None, label)``.

    Raises:
        ValueError: the line matches neither format (the caller adds file and line).
    """
    line = text.strip()
    if not line or line.startswith('#'):
        return None
    fields = line.rsplit(None, 2)
    if len(fields) == 3 and _parse_int(fields[2]) is not None:
        num_frames = _parse_int(fields[1])
        if num_frames is None and _parse_float(fields[1]) is not None:
            raise ValueError(f'the frame count must be an integer, got {fields[1]!r} in {line!r}')
        if num_frames is not None:
            if num_frames < 0:
                raise ValueError(f'negative frame count {num_frames}')
            return fields[0], num_frames, int(fields[2])
    fields = line.rsplit(None, 1)
    if len(fields) == 2 and _parse_int(fields[1]) is not None:
        return fields[0], None, int(fields[1])
    raise ValueError(f'expected {LINE_FORMATS}, got {line!r}')


def read_annotation_list(list_file, root, num_classes):
    """Read an annotation list and return its entries, in file order.

    Args:
        list_file: path of the list.
        root: prefix joined to relative video paths (``DATA.ROOT``).
        num_classes: labels must lie in ``[0, num_classes)``.

    Returns:
        list[AnnotationEntry]: one entry per video line (short videos not yet removed; see
        ``drop_short_videos``).

    Raises:
        InputFileError: the list does not exist.
        AnnotationError: a malformed line or a label out of range (naming ``file:line``), or a list
            without any video.
    """
    if not os.path.isfile(list_file):
        raise InputFileError(f'annotation list not found: {list_file}')
    entries = []
    with open(list_file, encoding='utf-8') as f:
        for line_number, text in enumerate(f, start=1):
            try:
                parsed = parse_annotation_line(text)
            except ValueError as error:
                raise AnnotationError(f'{list_file}:{line_number}: {error}') from error
            if parsed is None:
                continue
            path, num_frames, label = parsed
            if not 0 <= label < num_classes:
                raise AnnotationError(f'{list_file}:{line_number}: label {label} is outside '
                                      f'[0, {num_classes}) (DATA.NUM_CLASSES = {num_classes})')
            entries.append(AnnotationEntry(os.path.join(root, path), num_frames, label, list_file,
                                           line_number))
    if not entries:
        raise AnnotationError(f'{list_file}: the list holds no videos')
    return entries


def drop_short_videos(entries, min_frames=MIN_VIDEO_FRAMES):
    """Remove videos with fewer than ``min_frames`` frames, with one warning that counts them.

    Frame folders count their real image files; videos use the list's number, or decord's length for
    two-field lines. An existing but empty folder and a path that cannot be counted are kept: they
    are bad input, reported when first read (or by ``DATA.CHECK_FILES``), not short videos.

    Args:
        entries: entries of one list.
        min_frames: the smallest frame count kept.

    Returns:
        list[AnnotationEntry]: the kept entries, in order.
    """
    kept, short = [], []
    for entry in entries:
        frame_count = count_frames(entry.path, entry.num_frames)
        is_short = frame_count is not None and frame_count < min_frames
        is_empty_folder = frame_count == 0 and os.path.isdir(entry.path)
        if is_short and not is_empty_folder:
            short.append((entry, frame_count))
        else:
            kept.append(entry)
    if short:
        first, frame_count = short[0]
        logger.warning('skipped %d of %d videos with fewer than %d frames in %s (first: line %d, %s, '
                       '%d frames)', len(short), len(entries), min_frames, first.list_file,
                       first.line_number, first.path, frame_count)
    return kept
