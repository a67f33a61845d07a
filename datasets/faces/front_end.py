"""From a raw video to square face crops (docs/data.md, section 18).

Two passes over a video: the first runs the detector on every ``detect_every``-th frame (and the last)
and follows the main face (``datasets.faces.track``); the second decodes the frames that have a face
and cuts out the crops. Frames are read in chunks, so a long video never sits in memory whole.
"""
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from datasets.decoding import open_video
from datasets.faces.crops import crop_square, crop_squares, draw_crop_boxes
from datasets.faces.detectors import DETECTORS, build_detector
from datasets.faces.track import follow_face, runs
from utils.errors import UserError

# Frames decoded per call: bounds the memory a long video takes.
FRAME_CHUNK = 32
# Frame file names of written crops have at least this many digits (``00001.jpg``).
MIN_NAME_DIGITS = 5
# Height in pixels of each frame in ``FaceVideo.picture``.
PICTURE_FRAME_HEIGHT = 135


def setting(default, help_text):
    """A ``FaceSettings`` field whose help text is also its command-line help."""
    return field(default=default, metadata={'help': help_text})


@dataclass(frozen=True)
class FaceSettings:
    """Settings of the face front end. The options of ``scripts/prepare_faces.py`` and
    ``scripts/predict.py --faces`` take their defaults and help from here."""
    size: int = setting(224, 'side of the square crops, pixels')
    margin: float = setting(1.6, 'crop side / face side: the whole face, some hair and the chin')
    detector: str = setting('hog', "'hog' (dlib's, built in) or 'yunet' (OpenCV, needs --detector-model)")
    detector_model: str = setting('', "the YuNet ONNX file, for --detector yunet")
    detect_size: int = setting(640, "longer side of the frames the detector sees, pixels ('hog' misses faces "
                                    "under about 80 px at that scale)")
    detect_every: int = setting(2, 'run the detector on every k-th frame; the boxes between are interpolated')
    max_gap: int = setting(15, 'longest run of frames without the face that is filled (0.5 s at 30 fps)')
    smooth_sigma: float = setting(2.0, 'Gaussian smoothing of the boxes over time, in frames (0: none)')

    def validate(self):
        """Raise UserError naming the first setting out of range; returns self."""
        checks = {'size': self.size >= 8, 'margin': self.margin >= 1, 'detector': self.detector in DETECTORS,
                  'detect_size': self.detect_size >= 80, 'detect_every': self.detect_every >= 1,
                  'max_gap': self.max_gap >= 0, 'smooth_sigma': self.smooth_sigma >= 0}
        for name, ok in checks.items():
            if not ok:
                raise UserError(f'face setting --{name.replace("_", "-")} {getattr(self, name)} is out of '
                                f'range (docs/data.md, section 18)')
        if self.max_gap < self.detect_every - 1:  # the frames between two examined ones must be filled
            raise UserError(f'--max-gap {self.max_gap} must be at least --detect-every - 1 '
                            f'({self.detect_every - 1}), the frames the detector skips')
        return self


def add_face_arguments(parser):
    """Add one option per ``FaceSettings`` field (``--max-gap`` ...) to an argparse parser."""
    for option in fields(FaceSettings):
        parser.add_argument(f'--{option.name.replace("_", "-")}', type=type(option.default), default=option.default,
                            help=f'{option.metadata["help"]} (default: {option.default!r})')


def face_settings(args):
    """The validated ``FaceSettings`` of parsed options (see ``add_face_arguments``)."""
    return FaceSettings(**{option.name: getattr(args, option.name) for option in fields(FaceSettings)}).validate()


class NoFaceError(UserError, RuntimeError):
    """No face was found in a video; the message names the file."""


@dataclass
class FaceTrack:
    """The followed face of one video.

    Attributes:
        boxes: float ``[N, 3]`` face boxes ``(centre x, centre y, side)`` per frame, NaN where absent.
        squares: float ``[N, 3]`` crop squares ``(left, top, side)``, NaN where absent.
    """
    boxes: np.ndarray
    squares: np.ndarray

    @property
    def face_frames(self):
        """Indices of the frames that have a face (int array)."""
        return np.flatnonzero(~np.isnan(self.boxes[:, 0]))

    @property
    def absences(self):
        """``[(first, last), ...]``: the runs of frames without the face, inclusive."""
        return [(int(start), int(stop) - 1) for start, stop in runs(np.isnan(self.boxes[:, 0]))]


def read_rgb(video, indices):
    """Decode frames ``indices`` of an opened video: uint8 ``[n, H, W, 3]`` RGB NumPy array."""
    return video.read(indices).permute(0, 2, 3, 1).numpy()  # the decoders' memory is already HWC


def examined_frames(num_frames, detect_every):
    """The frames the detector runs on: every ``detect_every``-th, and the last."""
    return np.unique(np.append(np.arange(0, num_frames, detect_every), num_frames - 1))


def detect_faces(video, detector, detect_every, progress=None):
    """Run ``detector`` on the examined frames: ``{frame index: boxes [M, 4]}``.

    Args:
        progress: called with the number of frames covered after each chunk (for a progress bar).
    """
    detections, examined = {}, examined_frames(len(video), detect_every)
    for start in range(0, len(examined), FRAME_CHUNK):
        chunk = examined[start:start + FRAME_CHUNK]
        for index, frame in zip(chunk, read_rgb(video, chunk)):
            detections[int(index)] = detector(frame)
        if progress is not None:
            progress(int(chunk[-1]) + 1)
    return detections


def follow_face_in_video(video, detector, settings, progress=None):
    """Detect and follow the main face of an opened video.

    Returns:
        FaceTrack: with NaN boxes where the face is absent.

    Raises:
        NoFaceError: no face in any examined frame.
    """
    detections = detect_faces(video, detector, settings.detect_every, progress)
    boxes = follow_face(detections, len(video), settings.max_gap, settings.smooth_sigma)
    if np.isnan(boxes[:, 0]).all():
        entry = video.entry
        raise NoFaceError(f'{entry.location}: {entry.path}: no face found in its {len(video)} frames')
    return FaceTrack(boxes, crop_squares(boxes, settings.margin))


def face_crops(video, track, indices, size):
    """Crops of frames ``indices`` (all with a face): uint8 ``[n, size, size, 3]`` RGB."""
    frames = read_rgb(video, indices)
    return np.stack([crop_square(frame, track.squares[index], size) for index, frame in zip(indices, frames)])


def crop_chunks(video, track, size):
    """Yield ``(frame indices, crops [n, size, size, 3])`` of every frame with a face, in order."""
    face_frames = track.face_frames
    for start in range(0, len(face_frames), FRAME_CHUNK):
        indices = face_frames[start:start + FRAME_CHUNK]
        yield indices, face_crops(video, track, indices, size)


def frame_file_name(index, num_frames):
    """Zero-padded name of frame ``index`` (0-based) of a video of ``num_frames``: ``00001.jpg`` is the
    first; the name keeps the source frame number, so frames left out show as missing numbers."""
    digits = max(MIN_NAME_DIGITS, len(str(num_frames)))
    return f'{index + 1:0{digits}d}.jpg'


class FaceVideo:
    """The frames with a face of a video, as face crops: ``len()`` and ``read(indices)`` like the
    decoders of ``datasets.decoding``, so that the test-time sampling runs on the crops.

    Args:
        entry: the video's ``AnnotationEntry``.
        detector: a detector of ``datasets.faces.detectors``.
        settings: ``FaceSettings``.
        frame_order: how a frame folder's images are sorted (``DATA.FRAME_ORDER``).
    """

    def __init__(self, entry, detector, settings, frame_order='natural'):
        self.entry = entry
        self.video = open_video(entry, frame_order)
        self.size = settings.size
        self.track = follow_face_in_video(self.video, detector, settings)
        self.source_frames = self.track.face_frames  # item i is frame source_frames[i] of the video

    def __len__(self):
        return len(self.source_frames)

    def read(self, indices):
        """Crops of face frames ``indices`` (into ``source_frames``): uint8 ``[n, 3, size, size]``."""
        indices = np.asarray(indices)
        unique, inverse = np.unique(indices, return_inverse=True)  # each distinct frame decoded once
        crops = face_crops(self.video, self.track, self.source_frames[unique], self.size)
        return torch.from_numpy(crops[inverse]).permute(0, 3, 1, 2)  # channels-last, like the decoders

    def picture(self, source_indices, columns):
        """The video's frames ``source_indices`` with their crop squares drawn, ``columns`` per row (RGB)."""
        frames = read_rgb(self.video, source_indices)
        return draw_crop_boxes(frames, self.track.squares[source_indices], PICTURE_FRAME_HEIGHT, columns)

    def summary(self):
        """``{'frames', 'frames_with_face', 'absences'}``: the video's frame count, how many have the face,
        and the ``[first, last]`` frame runs (0-based, inclusive) without it."""
        return {'frames': len(self.video), 'frames_with_face': len(self.source_frames),
                'absences': [list(run) for run in self.track.absences]}


def build_face_detector(settings):
    """The detector that ``settings`` name."""
    return build_detector(settings.detector, settings.detect_size, settings.detector_model)
