"""Face detectors of the front end (docs/data.md, section 18): dlib's HOG detector, or YuNet from a file.

Every detector takes an RGB uint8 frame ``[H, W, 3]`` and returns float boxes ``[M, 4]``, one row per face:
``(centre x, centre y, side, score)`` in the frame's pixels. The box is a square of the face from the
brows to the chin, as dlib's HOG detector draws it; YuNet's taller box is mapped to the same square
(its width, its centre), so that one crop margin fits both. Each detector sees the frame scaled so that
its longer side is ``detect_size`` pixels: that sets both the cost and the smallest face found (about
80 px at that scale for the HOG detector).
"""
import functools
import os

import cv2
import numpy as np

from utils.errors import InputFileError, UserError

DETECTORS = ('hog', 'yunet')
# YuNet's confidence below which a box is not a face (OpenCV's sample uses 0.9 for photos; video
# frames are softer, and the tracking discards isolated boxes).
YUNET_SCORE_THRESHOLD = 0.7


def detection_scale(frame_shape, detect_size):
    """Factor that brings the longer side of a frame of ``frame_shape`` to ``detect_size`` pixels."""
    return detect_size / max(frame_shape[:2])


def resize_for_detection(frame, scale):
    """``frame`` resized by ``scale`` (area averaging when shrinking, bilinear when enlarging)."""
    if scale == 1:
        return frame
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(frame, None, fx=scale, fy=scale, interpolation=interpolation)


class HogDetector:
    """dlib's frontal-face detector (HOG features, linear SVM); its model ships inside dlib.

    Args:
        detect_size: longer side, in pixels, of the frame the detector sees.
    """

    def __init__(self, detect_size):
        try:
            import dlib
        except ImportError as error:
            raise UserError('the face front end needs dlib: pip install dlib-bin') from error
        self.detector = dlib.get_frontal_face_detector()
        self.detect_size = detect_size

    def __call__(self, frame):
        scale = detection_scale(frame.shape, self.detect_size)
        gray = cv2.cvtColor(resize_for_detection(frame, scale), cv2.COLOR_RGB2GRAY)
        rectangles, scores, _ = self.detector.run(gray, 0, 0.0)  # no upsampling: detect_size decides
        boxes = [((r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2, r.width(), score)
                 for r, score in zip(rectangles, scores)]
        return scale_boxes(np.array(boxes, dtype=np.float64).reshape(-1, 4), scale)


class YuNetDetector:
    """OpenCV's ``FaceDetectorYN`` (the YuNet CNN) from an ONNX file the user provides.

    Args:
        model_path: the YuNet ``.onnx`` file (OpenCV's model zoo, ``face_detection_yunet_2023mar.onnx``).
        detect_size: longer side, in pixels, of the frame the detector sees.

    Raises:
        InputFileError: the file does not exist. UserError: OpenCV cannot load it as YuNet.
    """

    def __init__(self, model_path, detect_size):
        if not os.path.isfile(model_path):
            raise InputFileError(f'YuNet model file not found: {model_path}')
        try:
            self.detector = cv2.FaceDetectorYN.create(model_path, '', (detect_size, detect_size),
                                                      YUNET_SCORE_THRESHOLD)
        except cv2.error as error:
            raise UserError(f'{model_path}: OpenCV cannot load it as a YuNet face detector '
                            f'({str(error).strip().splitlines()[-1]})') from error
        self.detect_size = detect_size

    def __call__(self, frame):
        scale = detection_scale(frame.shape, self.detect_size)
        small = cv2.cvtColor(resize_for_detection(frame, scale), cv2.COLOR_RGB2BGR)
        self.detector.setInputSize((small.shape[1], small.shape[0]))
        _, faces = self.detector.detect(small)  # [M, 15]: x, y, w, h, 5 landmarks, score
        if faces is None:
            return np.zeros((0, 4))
        x, y, width, height, score = faces[:, 0], faces[:, 1], faces[:, 2], faces[:, 3], faces[:, 14]
        boxes = np.stack([x + width / 2, y + height / 2, width, score], axis=1).astype(np.float64)
        return scale_boxes(boxes, scale)


def scale_boxes(boxes, scale):
    """Boxes ``[M, 4]`` found on a frame resized by ``scale``, in the original frame's pixels."""
    boxes[:, :3] /= scale
    return boxes


@functools.lru_cache(maxsize=4)
def build_detector(name, detect_size, model_path=''):
    """The detector called ``name`` (``hog`` or ``yunet``; ``yunet`` needs ``model_path``), built once per
    process and setting (dlib takes about half a second to build its detector)."""
    if name == 'hog':
        return HogDetector(detect_size)
    if name == 'yunet':
        if not model_path:
            raise UserError('--detector yunet needs the YuNet ONNX file: --detector-model PATH')
        return YuNetDetector(model_path, detect_size)
    raise UserError(f'unknown face detector {name!r} (known: {", ".join(DETECTORS)})')
