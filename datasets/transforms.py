"""Clip transforms on uint8 ``[T, 3, H, W]`` tensors: the published training and test pipelines.

One crop and flip per clip, applied to all its frames, vectorised over the frames; colour jitter is
applied or skipped per clip, and when applied, draws new factors and operation order for every frame
(the published recipe; ``AUG.PER_FRAME_JITTER`` False draws them once per clip). Each pipeline crops
the source frames first and resizes once: the release's "resize the short side to 256/224 S, then
crop" is the same geometry as cropping the corresponding box of the source and resizing it to S.
Flip, colour jitter and greyscale are per-pixel operations that commute with that resize, so they run
on whichever of the crop and the output has fewer pixels.

Colour jitter and greyscale run through OpenCV on a zero-copy view of the clip (``[T * h, w, 3]``,
the frames stacked into one tall image, which is exact for these per-pixel operations): torchvision's
uint8 colour functions convert to float and back for every operation, too slow for a data-loader worker
(docs/performance.md, "Data pipeline"). The operations follow torchvision's
``ColorJitter`` semantics (factor ranges, random order, clamping after each operation, per-frame
contrast mean; results within 1 level, hue within 3, of torchvision's); normalisation happens on the
device (``utils.engine.normalize_videos``).
"""
import logging

import cv2
import numpy as np
import torch
import torchvision.transforms.v2.functional as F

logger = logging.getLogger(__name__)

# Short side before cropping, relative to the input size (the release: 256 for 224).
RESIZE_RATIO = 256 / 224
# Multi-scale crop: side lengths relative to the short side; width and height scale indices may
# differ by at most MAX_SCALE_GAP; a side within SNAP_PIXELS of the input size becomes the input size.
CROP_SCALES = (1, .875, .75, .66)
MAX_SCALE_GAP = 1
SNAP_PIXELS = 3
# Colour-jitter strengths of the release: factors in [1 - s, 1 + s], hue shift in [-0.1, 0.1] turns.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.4, 0.4, 0.2, 0.1
FLIP_PROBABILITY = 0.5
# ITU-R 601 luma, as torchvision's rgb_to_grayscale and OpenCV's RGB2GRAY.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


def _coin(probability):
    return torch.rand(()).item() < probability


def _uniform(low, high):
    return low + (high - low) * torch.rand(()).item()


def _choose(options):
    return options[int(torch.randint(len(options), ()))]


def short_side_resize_shape(height, width, short_side):
    """The ``(height, width)`` after resizing the short side to ``short_side``, keeping the aspect."""
    scale = short_side / min(height, width)
    return round(height * scale), round(width * scale)


def multi_scale_crop_box(height, width, input_size):
    """A random multi-scale crop ``(top, left, crop_height, crop_width)`` of a ``height x width`` image.

    Crop sides are ``base * CROP_SCALES`` (base = short side) with scale indices at most
    ``MAX_SCALE_GAP`` apart; the position is one of the 5 fixed offsets (4 corners, centre) on a grid
    of ``(side - crop) // 4``.
    """
    base = min(height, width)
    sides = [int(base * scale) for scale in CROP_SCALES]
    sides = [input_size if abs(side - input_size) < SNAP_PIXELS else side for side in sides]
    pairs = [(sides[i], sides[j]) for i in range(len(sides)) for j in range(len(sides))
             if abs(i - j) <= MAX_SCALE_GAP]
    crop_height, crop_width = _choose(pairs)
    height_step, width_step = (height - crop_height) // 4, (width - crop_width) // 4
    offsets = [(0, 0), (0, 4 * width_step), (4 * height_step, 0), (4 * height_step, 4 * width_step),
               (2 * height_step, 2 * width_step)]
    top, left = _choose(offsets)
    return top, left, crop_height, crop_width


def _to_source_box(box, source_shape, resized_shape):
    """Map a crop box of the resized image back onto the source image."""
    scale_y, scale_x = source_shape[0] / resized_shape[0], source_shape[1] / resized_shape[1]
    top, left, crop_height, crop_width = box
    crop_height = min(source_shape[0], max(1, round(crop_height * scale_y)))
    crop_width = min(source_shape[1], max(1, round(crop_width * scale_x)))
    top = min(round(top * scale_y), source_shape[0] - crop_height)
    left = min(round(left * scale_x), source_shape[1] - crop_width)
    return top, left, crop_height, crop_width


def _pixels(clip):
    """The clip's memory as one ``[T * H, W, 3]`` uint8 numpy image (a view, for OpenCV)."""
    frames, _, height, width = clip.shape
    return clip.permute(0, 2, 3, 1).numpy().reshape(frames * height, width, 3)


def _adjust_brightness(image, factor, frames):
    cv2.addWeighted(image, factor, image, 0, 0, dst=image)


def _adjust_contrast(image, factor, frames):
    # blend each frame with the mean of its own greyscale image, as torchvision does per image (the
    # mean of the luma is the luma of the channel means)
    for frame in image.reshape(frames, -1, image.shape[1], 3):
        mean = float(np.dot(cv2.mean(frame)[:3], LUMA_WEIGHTS))
        cv2.addWeighted(frame, factor, frame, 0, (1 - factor) * mean, dst=frame)


def _adjust_saturation(image, factor, frames):
    # blend with the luma: one 3 x 3 colour matrix, factor * I + (1 - factor) * luma rows
    matrix = factor * np.eye(3) + (1 - factor) * np.tile(LUMA_WEIGHTS, (3, 1))
    cv2.transform(image, matrix.astype(np.float32), dst=image)


def _adjust_hue(image, shift, frames):
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)  # hue in 0..255 = one full turn
    hue = hsv[..., 0]
    hue += round(shift * 256) % 256  # uint8 arithmetic wraps around the colour circle
    cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL, dst=image)


COLOR_OPERATIONS = (_adjust_brightness, _adjust_contrast, _adjust_saturation, _adjust_hue)


def draw_color_jitter():
    """Random colour-jitter parameters: ``[(operation, factor), ...]`` in a random order."""
    factors = (_uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS), _uniform(1 - CONTRAST, 1 + CONTRAST),
               _uniform(1 - SATURATION, 1 + SATURATION), _uniform(-HUE, HUE))
    return [(COLOR_OPERATIONS[i], factors[i]) for i in torch.randperm(len(COLOR_OPERATIONS)).tolist()]


def apply_color_jitter(clip, parameters):
    """Apply colour-jitter ``parameters`` (from ``draw_color_jitter``) to a uint8 clip, in place.

    Args:
        clip: uint8 ``[T, 3, H, W]`` in channels-last memory (its pixels are modified).
        parameters: ``[(operation, factor), ...]``, applied in order.
    """
    image = _pixels(clip)
    for operation, factor in parameters:
        operation(image, factor, clip.shape[0])


def convert_to_grayscale(clip):
    """Replace a channels-last uint8 clip's colours by their luma, in place (3 equal channels)."""
    image = _pixels(clip)
    cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB, dst=image)


class TrainTransform:
    """The published training pipeline.

    Short-side resize to ``RESIZE_RATIO * S``, multi-scale crop, resize to ``S x S`` (done as one crop
    of the source and one resize), horizontal flip (p 0.5), colour jitter, greyscale. Crop, flip and
    the jitter and greyscale coins are drawn once per clip; the jitter factors per frame or per clip.

    Args:
        input_size: the output side S.
        color_jitter_probability: probability of colour jitter for a clip (``AUG.COLOR_JITTER``).
        grayscale_probability: probability of greyscale for a clip (``AUG.GRAY_SCALE``).
        per_frame_jitter: draw the jitter factors and order for each frame (the release) instead of
            once per clip (``AUG.PER_FRAME_JITTER``).
    """

    def __init__(self, input_size, color_jitter_probability, grayscale_probability, per_frame_jitter):
        self.input_size = input_size
        self.color_jitter_probability = color_jitter_probability
        self.grayscale_probability = grayscale_probability
        self.per_frame_jitter = per_frame_jitter

    def crop_box(self, height, width):
        """A random source-image crop box ``(top, left, height, width)`` for a ``height x width`` clip."""
        resized = short_side_resize_shape(height, width, int(RESIZE_RATIO * self.input_size))
        box = multi_scale_crop_box(*resized, self.input_size)
        return _to_source_box(box, (height, width), resized)

    def _flip_and_colour(self, clip):
        """Flip and colour a ``[T, 3, h, w]`` clip that the transform owns (changed in place)."""
        if _coin(FLIP_PROBABILITY):
            clip = F.horizontal_flip(clip)
        clip = clip.contiguous(memory_format=torch.channels_last)  # OpenCV works on this memory
        if _coin(self.color_jitter_probability):
            if self.per_frame_jitter:
                for frame in clip.split(1):
                    apply_color_jitter(frame, draw_color_jitter())
            else:
                apply_color_jitter(clip, draw_color_jitter())
        if _coin(self.grayscale_probability):
            convert_to_grayscale(clip)
        return clip

    def __call__(self, frames):
        """uint8 ``[T, 3, H, W]`` -> uint8 ``[T, 3, S, S]`` (channels-last memory)."""
        top, left, height, width = self.crop_box(*frames.shape[-2:])
        clip = frames[..., top:top + height, left:left + width]  # [T, 3, h, w] view
        size = [self.input_size] * 2
        # flip and colour commute with the resize (per-pixel operations): apply them on whichever of
        # the crop and the output has fewer pixels (the crop, for DFEW's 224 px faces)
        if height * width <= self.input_size ** 2:
            own_copy = clip.clone(memory_format=torch.channels_last)  # never change the caller's frames
            return F.resize(self._flip_and_colour(own_copy), size, antialias=True)
        return self._flip_and_colour(F.resize(clip, size, antialias=True))


class TestTransform:
    """The test pipeline: 1 centre crop, or 3 crops along the long side.

    One crop: short side to ``RESIZE_RATIO * S``, centre ``S x S`` crop. Three crops: short side to S,
    three ``S x S`` crops at the start, centre and end of the long side.

    Args:
        input_size: the output side S.
        num_crops: 1 or 3 (``TEST.NUM_CROP``).
    """

    def __init__(self, input_size, num_crops):
        if num_crops not in (1, 3):
            raise ValueError(f'TEST.NUM_CROP = {num_crops}: must be 1 or 3')
        self.input_size = input_size
        self.num_crops = num_crops

    def crop_boxes(self, height, width):
        """The source-image crop boxes ``(top, left, height, width)`` of the test views."""
        if self.num_crops == 1:
            resized = short_side_resize_shape(height, width, int(RESIZE_RATIO * self.input_size))
            box = ((resized[0] - self.input_size) // 2, (resized[1] - self.input_size) // 2,
                   self.input_size, self.input_size)
            return [_to_source_box(box, (height, width), resized)]
        side = min(height, width)
        starts = [0, (max(height, width) - side) // 2, max(height, width) - side]
        if height > width:
            return [(start, 0, side, side) for start in starts]
        return [(0, start, side, side) for start in starts]

    def __call__(self, frames):
        """uint8 ``[T, 3, H, W]`` -> uint8 ``[num_crops, T, 3, S, S]``."""
        size = [self.input_size] * 2
        return torch.stack([F.resized_crop(frames, *box, size, antialias=True)
                            for box in self.crop_boxes(*frames.shape[-2:])])


def build_train_transform(config):
    """The training ``TrainTransform`` of the config (``DATA.INPUT_SIZE``, ``AUG.*``)."""
    return TrainTransform(config.DATA.INPUT_SIZE, config.AUG.COLOR_JITTER, config.AUG.GRAY_SCALE,
                          config.AUG.PER_FRAME_JITTER)


def build_test_transform(config):
    """The ``TestTransform`` of the config (``DATA.INPUT_SIZE``, ``TEST.NUM_CROP``)."""
    return TestTransform(config.DATA.INPUT_SIZE, config.TEST.NUM_CROP)
