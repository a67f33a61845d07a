"""Videos made from a real face photograph moved and scaled across the frames: material with a known
face position for the tests and the ``faces`` benchmark (docs/performance.md, section 9).

The photographs ship with packages, nothing is downloaded: Grace Hopper's portrait with matplotlib,
and scikit-image's ``data.astronaut()`` (Eileen Collins) for the tests.
"""
import cv2
import numpy as np
from matplotlib import cbook

# Face boxes (centre x, centre y, side) in the photographs' pixels, where dlib's HOG detector and
# libfacedetection's YuNet agree to within a few pixels.
GRACE_HOPPER_FACE = (270.0, 229.0, 180.0)
ASTRONAUT_FACE = (221.0, 120.0, 90.0)
# Grey of the canvas around the moved photograph.
BACKGROUND = 90


def grace_hopper():
    """Matplotlib's sample photograph of Grace Hopper, uint8 RGB ``[600, 512, 3]``."""
    with cbook.get_sample_data('grace_hopper.jpg') as file:
        data = np.frombuffer(file.read(), dtype=np.uint8)
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def place_photo(photo, photo_face, face_box, frame_size):
    """One frame ``[H, W, 3]``: ``photo`` scaled and shifted so that its face lands on ``face_box``.

    Args:
        photo: uint8 RGB photograph.
        photo_face: ``(centre x, centre y, side)`` of the face in ``photo``.
        face_box: ``(centre x, centre y, side)`` the face gets in the frame.
        frame_size: ``(width, height)`` of the frame.
    """
    scale = face_box[2] / photo_face[2]
    shift_x, shift_y = face_box[0] - scale * photo_face[0], face_box[1] - scale * photo_face[1]
    matrix = np.array([[scale, 0, shift_x], [0, scale, shift_y]], dtype=np.float64)
    return cv2.warpAffine(photo, matrix, frame_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(BACKGROUND,) * 3)


def moving_photo_frames(photo, photo_face, face_boxes, frame_size):
    """Frames of ``photo`` with its face at each of ``face_boxes``: uint8 ``[N, H, W, 3]``.

    Args:
        face_boxes: float ``[N, 3]`` ``(centre x, centre y, side)`` of the face in each frame.
    """
    return np.stack([place_photo(photo, photo_face, box, frame_size) for box in face_boxes])


def drifting_face_boxes(num_frames, frame_size, start, end, side_range):
    """Face boxes ``[N, 3]`` moving linearly from ``start`` to ``end`` (fractions of the frame's width and
    height) while the face side grows from ``side_range[0]`` to ``side_range[1]`` pixels."""
    progress = np.linspace(0, 1, num_frames)[:, None]
    centres = (np.array(start) + progress * (np.array(end) - np.array(start))) * np.array(frame_size)
    sides = side_range[0] + progress * (side_range[1] - side_range[0])
    return np.concatenate([centres, sides], axis=1)


# ----------------------------------------------------------------------------------------------------
# Still frames for a detection rate (``python -m scripts.benchmark faces --photos``)
# ----------------------------------------------------------------------------------------------------
# The cameraman's face in scikit-image's ``data.camera()`` (three-quarter view; the detectors' centres
# differ by about 17 px, so this is their middle).
CAMERA_FACE = (232.0, 155.0, 58.0)
# Face widths, in pixels of a 640 x 360 frame, at which each photograph is placed.
PHOTO_FACE_SIDES = (48, 64, 96, 128, 192)


def rotate_about(frame, centre, degrees):
    """``frame`` turned by ``degrees`` about ``centre`` (the face stays where it was)."""
    matrix = cv2.getRotationMatrix2D(tuple(map(float, centre)), degrees, 1.0)
    return cv2.warpAffine(frame, matrix, frame.shape[1::-1], borderMode=cv2.BORDER_REFLECT)


def jpeg(frame, quality):
    """``frame`` after JPEG compression at ``quality``."""
    _, data = cv2.imencode('.jpg', frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


# Changes of a placed frame that keep the face's centre: (frame, face box) -> frame.
PHOTO_VARIANTS = {
    'plain': lambda frame, box: frame,
    'dark': lambda frame, box: (frame * 0.45).astype(np.uint8),
    'bright': lambda frame, box: (255 * (frame / 255) ** 0.5).astype(np.uint8),
    'blurred': lambda frame, box: cv2.GaussianBlur(frame, (0, 0), 2.0),
    'jpeg 25': lambda frame, box: jpeg(frame, 25),
    'noisy': lambda frame, box: np.clip(frame + np.random.default_rng(0).normal(0, 12, frame.shape), 0, 255)
    .astype(np.uint8),
    'turned -20': lambda frame, box: rotate_about(frame, box[:2], -20),
    'turned +20': lambda frame, box: rotate_about(frame, box[:2], 20),
}


def photo_test_frames(photos, frame_size=(640, 360), seed=0):
    """Each photograph at each of ``PHOTO_FACE_SIDES`` and in each of ``PHOTO_VARIANTS``, at a random
    place in the frame: ``[(photo name, face side, variant, frame, face box), ...]``.

    Args:
        photos: ``{name: (uint8 RGB photograph, its face box (centre x, centre y, side))}``.
    """
    rng, frames = np.random.default_rng(seed), []
    for name, (photo, photo_face) in photos.items():
        for side in PHOTO_FACE_SIDES:
            for variant, change in PHOTO_VARIANTS.items():
                centre = rng.uniform(side / 2, np.array(frame_size) - side / 2)
                box = np.array([*centre, side])
                frame = change(place_photo(photo, photo_face, box, frame_size), box)
                frames.append((name, side, variant, frame, box))
    return frames
