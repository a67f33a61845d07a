"""Square face crops and pictures of the face boxes (docs/data.md, section 18).

The crop is a square of ``margin`` x the face side, centred ``CROP_RAISE`` x the side above the face
centre so that the forehead and some hair are in and the neck mostly out, like the benchmarks' crops.
Where it reaches past the frame's edge, the missing part is black: the face stays centred and keeps its
scale instead of sliding towards the crop's edge.
"""
import cv2
import numpy as np

# The crop's centre sits this fraction of the face side above the face box's centre.
CROP_RAISE = 0.1
# Colour (RGB) and width in pixels of the boxes drawn by ``draw_crop_boxes``.
BOX_COLOUR = (0, 255, 0)
BOX_WIDTH = 2


def crop_squares(boxes, margin):
    """The crop squares of face boxes: float ``[N, 3]`` ``(left, top, side)``.

    Args:
        boxes: float ``[N, 3]`` face boxes ``(centre x, centre y, side)``.
        margin: crop side / face side.
    """
    side = boxes[:, 2] * margin
    centre_y = boxes[:, 1] - CROP_RAISE * boxes[:, 2]
    return np.stack([boxes[:, 0] - side / 2, centre_y - side / 2, side], axis=1)


def crop_square(frame, square, size):
    """Cut ``square`` ``(left, top, side)`` out of an RGB frame ``[H, W, 3]``, padded with black where
    it leaves the frame, and resize it to ``size`` x ``size`` (no distortion: the square stays square).

    Returns:
        uint8 ``[size, size, 3]``.
    """
    left, top, side = (int(round(value)) for value in square)
    side = max(side, 1)
    height, width = frame.shape[:2]
    inside = frame[max(top, 0):max(min(top + side, height), 0), max(left, 0):max(min(left + side, width), 0)]
    if inside.shape[0] != side or inside.shape[1] != side:
        pad_top, pad_left = max(-top, 0), max(-left, 0)
        inside = cv2.copyMakeBorder(inside, pad_top, side - inside.shape[0] - pad_top, pad_left,
                                    side - inside.shape[1] - pad_left, cv2.BORDER_CONSTANT, value=0)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(inside, (size, size), interpolation=interpolation)


def draw_crop_boxes(frames, squares, height, columns):
    """A grid of the frames, each ``height`` px high, with its crop square drawn, ``columns`` per row.

    Args:
        frames: uint8 ``[N, H, W, 3]`` RGB.
        squares: float ``[N, 3]`` ``(left, top, side)`` in the frames' pixels.
        height: height of each frame in the picture.
        columns: frames per row (the last row is filled with black).

    Returns:
        uint8 RGB picture ``[rows * height, columns * width, 3]``.
    """
    scale = height / frames.shape[1]
    tiles = []
    for frame, (left, top, side) in zip(frames, squares * scale):
        tile = np.ascontiguousarray(cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
        tiles.append(cv2.rectangle(tile, (int(left), int(top)), (int(left + side), int(top + side)),
                                   BOX_COLOUR, BOX_WIDTH))
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[start:start + columns], axis=1) for start in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)
