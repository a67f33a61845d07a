"""Reading the sampled frames of a video: folders of images (torchvision decoders) or video files (decord).

Only the sampled frames are decoded. Frames come back as uint8 ``[N, 3, H, W]`` tensors in
channels-last memory (the decoders write height x width x channel), which the transforms keep: the
uint8 resize kernels and OpenCV's colour functions are fastest on that layout.
"""
import logging
import os
import re
import warnings

# decord ships an old zlib; OpenCV and torchvision, loaded after it, decode and write PNG files through
# that zlib and fail ("libpng error", "decode_png ... Internal error"). Both are loaded before it here.
import cv2  # noqa: F401 (loaded before decord, see above)
import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, read_file

import decord  # noqa: E402 (after OpenCV and torchvision, see above)

from utils.errors import UserError

logger = logging.getLogger(__name__)

# torchvision 0.29 announces that TorchCodec will take over its image decoders; they are still the
# project's choice (pinned torchvision), so the warning, repeated for every decoded clip, is silenced.
warnings.filterwarnings('ignore', message='The image decoding and encoding capabilities of TorchVision',
                        category=DeprecationWarning)

FRAME_EXTENSIONS = ('.jpg', '.jpeg', '.png')
JPEG_EXTENSIONS = ('.jpg', '.jpeg')


class VideoReadError(UserError, RuntimeError):
    """A video of a list cannot be read; the message names the file and the list line."""


def natural_key(name):
    """Sort key that compares the numbers in a name as numbers: "img_2.jpg" before "img_10.jpg"."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


# DATA.FRAME_ORDER -> sort key of frame file names ('lexicographic': as strings, as the release sorted).
FRAME_ORDER_KEYS = {'natural': natural_key, 'lexicographic': None}


def frame_names(folder):
    """The image file names (``.jpg``/``.jpeg``/``.png``) of a frame folder, unsorted."""
    return [entry.name for entry in os.scandir(folder)
            if entry.is_file() and entry.name.lower().endswith(FRAME_EXTENSIONS)]


def list_frame_files(folder, frame_order='natural'):
    """Return the image files of a frame folder in ``frame_order`` (``DATA.FRAME_ORDER``)."""
    names = sorted(frame_names(folder), key=FRAME_ORDER_KEYS[frame_order])
    return [os.path.join(folder, name) for name in names]


def orders_disagree(names):
    """True if ``names`` sort differently as strings and naturally (frame numbers not zero-padded)."""
    return sorted(names) != sorted(names, key=natural_key)


def count_frames(path, listed_count=None):
    """Frames of a video: real files for a folder, else ``listed_count`` or decord's length.

    Returns:
        int or None: None when the path is missing or the video cannot be opened.
    """
    if os.path.isdir(path):
        return len(frame_names(path))
    if listed_count is not None:
        return listed_count
    if not os.path.isfile(path):
        return None
    try:
        return len(decord.VideoReader(path, num_threads=1))
    except (decord.DECORDError, RuntimeError):
        return None


def find_missing_files(entries):
    """Return ``(entry, reason)`` for entries whose path is missing or an empty frame folder."""
    problems = []
    for entry in entries:
        if not os.path.exists(entry.path):
            problems.append((entry, 'not found'))
        elif os.path.isdir(entry.path) and not frame_names(entry.path):
            problems.append((entry, 'frame folder without .jpg/.png files'))
    return problems


def _read_error(entry, path, what):
    return VideoReadError(f'{entry.location}: {path}: {what}')


class FrameFolder:
    """A video stored as a folder of images, one per frame.

    Args:
        entry: the list entry (for the path and for error messages).
        frame_order: how the file names are sorted (``DATA.FRAME_ORDER``).
    """

    def __init__(self, entry, frame_order='natural'):
        self.entry = entry
        self.files = list_frame_files(entry.path, frame_order)
        if not self.files:
            raise _read_error(entry, entry.path, 'frame folder without .jpg/.png files')

    def __len__(self):
        return len(self.files)

    def _decode_one(self, path, data):
        try:
            return decode_image(data, mode=ImageReadMode.RGB)
        except RuntimeError as error:
            raise _read_error(self.entry, path, f'cannot decode the image ({error})') from error

    def _decode(self, paths):
        try:
            data = [read_file(path) for path in paths]
        except RuntimeError as error:
            raise _read_error(self.entry, self.entry.path, f'cannot read a frame ({error})') from error
        if all(path.lower().endswith(JPEG_EXTENSIONS) for path in paths):
            try:
                return decode_jpeg(data, mode=ImageReadMode.RGB)  # one call decodes the whole batch
            except RuntimeError:
                pass  # decode one by one below, to name the bad file
        return [self._decode_one(path, item) for path, item in zip(paths, data)]

    def read(self, indices):
        """Decode the frames at ``indices`` (each distinct frame once) -> uint8 ``[N, 3, H, W]``."""
        indices = np.asarray(indices)
        unique, inverse = np.unique(indices, return_inverse=True)
        frames = self._decode([self.files[i] for i in unique])
        if len({tuple(frame.shape) for frame in frames}) > 1:
            raise _read_error(self.entry, self.entry.path, 'frames of different sizes')
        # permute to [H, W, 3] views first: the decoders' memory is HWC, so this stack is a memcpy
        stacked = torch.stack([frame.permute(1, 2, 0) for frame in frames])  # [U, H, W, 3]
        if len(unique) < len(indices) or not np.array_equal(unique, indices):
            stacked = stacked.index_select(0, torch.from_numpy(inverse))  # [N, H, W, 3]: repeats
        return stacked.permute(0, 3, 1, 2)  # [N, 3, H, W] in channels-last memory


class VideoFile:
    """A video file decoded with decord (only the requested frames).

    Args:
        entry: the list entry (for the path and for error messages).
    """

    def __init__(self, entry):
        self.entry = entry
        try:
            self.reader = decord.VideoReader(entry.path, num_threads=1)
        except (decord.DECORDError, RuntimeError) as error:
            raise _read_error(entry, entry.path, f'cannot open the video ({error})') from error
        if len(self.reader) == 0:
            raise _read_error(entry, entry.path, 'the video has no frames')

    def __len__(self):
        return len(self.reader)

    def read(self, indices):
        """Decode the frames at ``indices`` -> uint8 ``[N, 3, H, W]`` (channels-last)."""
        try:
            frames = self.reader.get_batch(list(map(int, indices))).asnumpy()  # [N, H, W, 3]
        except (decord.DECORDError, RuntimeError, IndexError) as error:
            what = f'cannot decode the video, corrupt or truncated? ({error})'
            if 'DECORDArrayCopyFromTo' in str(error):
                what = (f'decord cannot convert frames {self.reader[0].shape[1]} pixels wide (it fails on '
                        f'some small widths such as 16, 24, 48, 72): re-encode the video or use frames')
            raise _read_error(self.entry, self.entry.path, what) from error
        return torch.from_numpy(frames).permute(0, 3, 1, 2)


def open_video(entry, frame_order='natural'):
    """Open an entry's frames: a ``FrameFolder`` (names sorted by ``frame_order``) for directories, else
    a ``VideoFile``.

    Raises:
        VideoReadError: the path is missing, an empty folder or an unreadable video.
    """
    if os.path.isdir(entry.path):
        return FrameFolder(entry, frame_order)
    if not os.path.exists(entry.path):
        raise _read_error(entry, entry.path, 'frame folder or video file not found')
    if entry.path.lower().endswith(FRAME_EXTENSIONS):
        raise _read_error(entry, entry.path, 'a still image, not a video: give a video file, or a folder of '
                                             'frames for a sequence of images')
    return VideoFile(entry)
