"""Clip transforms: one geometry draw per clip, colour jitter per frame (default) or per clip with one
coin per clip, shapes, dtype, normalisation, the crop rules, colour operations against torchvision's own
functions."""
import pytest
import torch
import torchvision.transforms.v2.functional as F

from conftest import tiny_config
from datasets import transforms
from datasets.transforms import (TrainTransform, apply_color_jitter, build_train_transform,
                                 convert_to_grayscale, draw_color_jitter, multi_scale_crop_box)
from utils.engine import normalize_videos

TestTransform = transforms.TestTransform
TestTransform.__test__ = False  # not a pytest test class


def smooth_frames(num_frames=4, height=48, width=64, seed=0):
    """uint8 [T, 3, H, W] with smooth structure (a blurred random image per frame)."""
    generator = torch.Generator().manual_seed(seed)
    frames = (torch.rand(num_frames, 3, height, width, generator=generator) * 255).to(torch.uint8)
    return F.gaussian_blur(frames, [7, 7])


def identical_frames(num_frames=6, height=40, width=56):
    return smooth_frames(1, height, width).expand(num_frames, -1, -1, -1).contiguous()


def test_per_clip_option_gives_all_frames_one_colour_draw():
    transform = TrainTransform(32, color_jitter_probability=1.0, grayscale_probability=0.0,
                               per_frame_jitter=False)
    torch.manual_seed(0)
    for _ in range(10):
        clip = transform(identical_frames())
        assert (clip == clip[:1]).all()  # same crop, flip and colour draw for every frame


def test_per_frame_jitter_gives_every_frame_its_own_colours_but_one_geometry():
    transform = TrainTransform(32, color_jitter_probability=1.0, grayscale_probability=0.0,
                               per_frame_jitter=True)
    torch.manual_seed(0)
    for _ in range(5):
        clip = transform(identical_frames())
        flat = clip.flatten(1)
        assert all(not torch.equal(flat[i], flat[j]) for i in range(len(flat)) for j in range(i))
    grey = identical_frames()[:, :1].expand(-1, 3, -1, -1).contiguous()  # hue / saturation inert
    clip = transform(grey)
    # one crop and flip: every frame is a (clamped) affine function of the first one
    correlation = torch.corrcoef(clip[:, 0].flatten(1).float())
    assert correlation.min() > 0.97


def jittered_frame_counts(per_frame_jitter, trials=200):
    """Per clip, how many frames colour jitter (p 0.5) changed, against the same draws without it."""
    plain = TrainTransform(32, 0.0, 0.0, per_frame_jitter)
    jittered = TrainTransform(32, 0.5, 0.0, per_frame_jitter)
    frames = identical_frames(num_frames=6, height=32, width=32)
    torch.manual_seed(4)
    counts = []
    for _ in range(trials):
        state = torch.get_rng_state()
        reference = plain(frames)
        torch.set_rng_state(state)
        clip = jittered(frames)  # same crop / flip draws come first
        counts.append(sum(not torch.equal(a, b) for a, b in zip(clip, reference)))
    return counts


@pytest.mark.parametrize('per_frame_jitter', [True, False])
def test_the_colour_jitter_coin_is_tossed_once_per_clip(per_frame_jitter):
    counts = jittered_frame_counts(per_frame_jitter)
    assert set(counts) == {0, 6}  # all frames untouched or all jittered, never some of them
    assert abs(counts.count(6) / len(counts) - 0.5) < 0.1


def test_per_frame_jitter_is_the_default():
    assert build_train_transform(tiny_config()).per_frame_jitter is True
    assert build_train_transform(tiny_config(AUG__PER_FRAME_JITTER=False)).per_frame_jitter is False


def test_training_never_changes_the_input_frames():
    transform = TrainTransform(40, 1.0, 1.0, False)  # crops up to the full 40 x 40 frame
    frames = smooth_frames(num_frames=2, height=40, width=40).contiguous(memory_format=torch.channels_last)
    original = frames.clone()
    torch.manual_seed(0)
    for _ in range(20):
        transform(frames)
        assert torch.equal(frames, original)


def test_training_output_shape_dtype_and_spread_of_draws():
    transform = TrainTransform(32, 0.8, 0.2, False)
    frames = smooth_frames(num_frames=8)
    torch.manual_seed(1)
    clips = [transform(frames) for _ in range(30)]
    assert all(clip.shape == (8, 3, 32, 32) and clip.dtype == torch.uint8 for clip in clips)
    assert len({clip.sum().item() for clip in clips}) > 20  # random crops / flips / colours differ


def test_training_without_colour_changes_is_a_crop_resize_and_maybe_flip():
    transform = TrainTransform(32, 0.0, 0.0, False)
    frames = smooth_frames(num_frames=2, height=40, width=40)
    torch.manual_seed(3)
    box = transform.crop_box(40, 40)
    torch.manual_seed(3)
    clip = transform(frames)
    expected = F.resized_crop(frames, *box, [32, 32], antialias=True)
    assert torch.equal(clip, expected) or torch.equal(clip, F.horizontal_flip(expected))


def test_multi_scale_crop_boxes_follow_the_published_rule():
    # a 256 x 341 image (short side 256) cropped for S = 224: sides 256, 224 (snapped), 192, 168
    sides = {256, 224, 192, 168}
    torch.manual_seed(0)
    seen_pairs, seen_offsets = set(), set()
    for _ in range(2000):
        top, left, height, width = multi_scale_crop_box(256, 341, 224)
        assert height in sides and width in sides
        order = sorted(sides, reverse=True)
        assert abs(order.index(height) - order.index(width)) <= 1  # scale gap at most 1
        height_step, width_step = (256 - height) // 4, (341 - width) // 4
        offsets = [(0, 0), (0, 4 * width_step), (4 * height_step, 0), (4 * height_step, 4 * width_step),
                   (2 * height_step, 2 * width_step)]
        assert (top, left) in offsets
        seen_pairs.add((height, width))
        if height_step and width_step:  # the 5 offsets are distinct
            seen_offsets.add(offsets.index((top, left)))
    assert len(seen_pairs) == 10  # 4 same-scale + 2 x 3 neighbouring pairs
    assert len(seen_offsets) == 5


def test_training_crop_box_maps_the_resized_image_back_to_the_source():
    # source 112 x 112 is resized to 256 first: every box must lie inside the source image
    transform = TrainTransform(224, 0.0, 0.0, False)
    torch.manual_seed(0)
    for _ in range(200):
        top, left, height, width = transform.crop_box(112, 150)
        assert 0 <= top and top + height <= 112 and 0 <= left and left + width <= 150
        assert 112 * 0.66 * 0.98 <= min(height, width) and max(height, width) <= 112


def test_single_crop_test_view_is_the_centre_of_the_short_side_resize():
    frames = smooth_frames(num_frames=3, height=40, width=60)
    output = TestTransform(32, num_crops=1)(frames)
    assert output.shape == (1, 3, 3, 32, 32) and output.dtype == torch.uint8
    # reference: resize the short side to int(256 / 224 * 32) = 36, centre crop 32
    resized = F.resize(frames, [36, 54], antialias=True)
    reference = F.center_crop(resized, [32, 32])
    assert (output[0].int() - reference.int()).abs().float().mean() < 3.0


def test_three_crop_test_views_cover_the_long_side():
    frames = smooth_frames(num_frames=2, height=32, width=64)
    output = TestTransform(32, num_crops=3)(frames)
    assert output.shape == (3, 2, 3, 32, 32)
    assert torch.equal(output[0], frames[..., :32])  # short side already 32: plain crops
    assert torch.equal(output[1], frames[..., 16:48])
    assert torch.equal(output[2], frames[..., 32:])
    tall = TestTransform(32, num_crops=3)(frames.transpose(-1, -2))
    assert torch.equal(tall[2], frames.transpose(-1, -2)[..., 32:, :])


def test_normalize_videos_uses_the_configured_statistics():
    config = tiny_config()
    videos = torch.randint(0, 256, (2, 3, 4, 3, 8, 8), dtype=torch.uint8)  # [B, V, T, 3, H, W]
    normalised = normalize_videos(videos, config)
    assert normalised.dtype == torch.float32 and normalised.shape == videos.shape
    assert normalised.is_contiguous()
    channels_last = normalize_videos(videos.flatten(0, 2).contiguous(memory_format=torch.channels_last)
                                     .unflatten(0, videos.shape[:3]), config)
    assert channels_last.is_contiguous() and torch.equal(channels_last, normalised)
    mean, std = torch.tensor(config.DATA.MEAN), torch.tensor(config.DATA.STD)
    expected = (videos.float().movedim(-3, -1) - mean) / std
    torch.testing.assert_close(normalised.movedim(-3, -1), expected)
    constant = torch.full((1, 1, 3, 2, 2), 0, dtype=torch.uint8)
    constant[:, :, 0], constant[:, :, 1], constant[:, :, 2] = 124, 116, 104  # ~ the mean colour
    assert normalize_videos(constant, config).abs().max() < 0.02


@pytest.mark.parametrize('operation, reference, factor, tolerance', [
    (transforms._adjust_brightness, F.adjust_brightness, 1.35, 1),
    (transforms._adjust_brightness, F.adjust_brightness, 0.6, 1),
    (transforms._adjust_contrast, F.adjust_contrast, 0.65, 1),
    (transforms._adjust_contrast, F.adjust_contrast, 1.4, 1),
    (transforms._adjust_saturation, F.adjust_saturation, 0.8, 1),
    (transforms._adjust_saturation, F.adjust_saturation, 1.2, 1),
    (transforms._adjust_hue, F.adjust_hue, 0.1, 3),
    (transforms._adjust_hue, F.adjust_hue, -0.07, 3),
])
def test_colour_operations_match_torchvision(operation, reference, factor, tolerance):
    frames = smooth_frames(num_frames=3)
    clip = frames.contiguous(memory_format=torch.channels_last)
    apply_color_jitter(clip, [(operation, factor)])
    difference = (clip.int() - reference(frames, factor).int()).abs()
    assert difference.max() <= tolerance  # rounding (OpenCV) vs truncation (torchvision)
    assert difference.float().mean() < 0.75


def test_grayscale_matches_torchvision():
    frames = smooth_frames(num_frames=2)
    clip = frames.contiguous(memory_format=torch.channels_last)
    convert_to_grayscale(clip)
    assert (clip.int() - F.rgb_to_grayscale(frames, num_output_channels=3).int()).abs().max() <= 1


def test_color_jitter_draws_the_published_ranges_in_random_order():
    torch.manual_seed(0)
    orders, factors = set(), {name: [] for name in ('brightness', 'contrast', 'saturation', 'hue')}
    for _ in range(300):
        parameters = draw_color_jitter()
        orders.add(tuple(operation.__name__ for operation, _ in parameters))
        for operation, factor in parameters:
            factors[operation.__name__.removeprefix('_adjust_')].append(factor)
    assert len(orders) > 12  # 24 orders possible
    for name, (low, high) in {'brightness': (0.6, 1.4), 'contrast': (0.6, 1.4),
                              'saturation': (0.8, 1.2), 'hue': (-0.1, 0.1)}.items():
        assert low <= min(factors[name]) < low + 0.05 and high - 0.05 < max(factors[name]) <= high


def test_colour_jitter_and_grayscale_probabilities():
    torch.manual_seed(0)
    frames = smooth_frames(num_frames=2, height=32, width=32)
    plain = TrainTransform(32, 0.0, 0.0, False)
    jittered = TrainTransform(32, 0.8, 0.2, False)
    grey_count, changed_count, trials = 0, 0, 300
    for _ in range(trials):
        state = torch.get_rng_state()
        reference = plain(frames)
        torch.set_rng_state(state)
        clip = jittered(frames)  # same crop / flip draws come first
        grey_count += bool((clip[:, 0] == clip[:, 1]).all() and (clip[:, 1] == clip[:, 2]).all())
        changed_count += not torch.equal(clip, reference)
    assert abs(grey_count / trials - 0.2) < 0.07
    assert abs(changed_count / trials - (1 - 0.2 * 0.8)) < 0.07  # unchanged: no jitter and no grey
