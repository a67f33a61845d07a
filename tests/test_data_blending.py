"""Batch blending: soft labels, smoothing values, lambda distributions (against scipy's Beta), the
mixup / FMix switch, one FMix mask shared by all frames, and the two FMix mask constructions (the
release's, against an independent numpy construction and its switch statistics; the isotropic one)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import tiny_config
from datasets.blending import (FMIX_MASKS, BatchBlender, binarise_noise, build_blender, fmix_mask,
                               release_noise, release_noise_shape, smooth_one_hot)
from utils.config import KNOWN_FMIX_MASKS

K = 7
SMOOTHING = 0.1


def two_video_batch(num_frames=3, size=16):
    """Video 0 all zeros, video 1 all ones: a blended pixel's value is the partner's share."""
    videos = torch.zeros(2, num_frames, 3, size, size)
    videos[1] = 1.0
    return videos, torch.tensor([2, 5])


def swapped_draws(blender, count, seed=0):
    """Blend the two-video batch until ``count`` draws paired the videos with each other."""
    torch.manual_seed(seed)
    videos, labels = two_video_batch()
    draws = []
    while len(draws) < count:
        blended, targets = blender(videos, labels)
        if not torch.equal(blended, videos):  # identity permutation leaves the batch unchanged
            draws.append((blended, targets))
    return draws, labels


def is_fmix(blended):
    return bool(((blended == 0) | (blended == 1)).all())


def test_smooth_one_hot_values():
    targets = smooth_one_hot(torch.tensor([0, 3, 6]), K, SMOOTHING)
    expected = torch.full((3, K), SMOOTHING / K)
    expected[[0, 1, 2], [0, 3, 6]] = 1 - SMOOTHING + SMOOTHING / K
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(targets.sum(1), torch.ones(3))


def test_soft_targets_sum_to_one_and_blend_the_smoothed_labels_with_the_lambda():
    blender = BatchBlender(K, 0.8, 1.0, 0.5, SMOOTHING, 'release')
    draws, labels = swapped_draws(blender, 60)
    own = smooth_one_hot(labels, K, SMOOTHING)
    for blended, targets in draws:
        torch.testing.assert_close(targets.sum(1), torch.ones(2))
        weight = 1 - blended[0].mean().item()  # share of video 0 in blended video 0
        # FMix blends the labels with lambda, which the mask's area meets up to its rounding: one pixel
        tolerance = 1 / blended[0, 0, 0].numel() if is_fmix(blended) else 1e-6
        torch.testing.assert_close(targets[0], weight * own[0] + (1 - weight) * own[1], rtol=0, atol=tolerance)
        torch.testing.assert_close(targets[1], weight * own[1] + (1 - weight) * own[0], rtol=0, atol=tolerance)


def test_fmix_and_mixup_are_switched_with_the_configured_probability():
    draws, _ = swapped_draws(BatchBlender(K, 0.8, 1.0, 0.5, SMOOTHING, 'release'), 400, seed=1)
    fmix_share = sum(is_fmix(blended) for blended, _ in draws) / len(draws)
    assert abs(fmix_share - 0.5) < 0.08
    draws, _ = swapped_draws(BatchBlender(K, 0.8, 0.0, 0.5, SMOOTHING, 'release'), 50)  # FMix off
    assert not any(is_fmix(blended) for blended, _ in draws)


@pytest.mark.parametrize('switch_probability, alpha', [(0.0, 0.8), (1.0, 1.0)])
def test_lambda_follows_the_beta_distribution(switch_probability, alpha):
    blender = BatchBlender(K, 0.8, 1.0, switch_probability, SMOOTHING, 'release')
    draws, _ = swapped_draws(blender, 400, seed=2)
    lambdas = [1 - blended[0].mean().item() for blended, _ in draws]
    assert all(0 <= value <= 1 for value in lambdas)
    # FMix's label weight is the mask's exact area, lambda * H * W rounded up or down: a 16 x 16 grid
    assert stats.kstest(lambdas, stats.beta(alpha, alpha).cdf).pvalue > 0.01


def test_one_fmix_mask_is_shared_by_all_frames_and_channels():
    draws, _ = swapped_draws(BatchBlender(K, 0.8, 1.0, 1.0, SMOOTHING, 'release'), 20)
    for blended, _ in draws:
        mask = blended[0, 0, 0]  # [H, W]: 1 where video 0 took its partner's pixels
        assert (blended[0] == mask).all()  # every frame and channel
        assert torch.equal(blended[1], 1 - blended[0])  # the partner got the complement


def reference_release_mask(gaussian, height, width, fraction, round_up, decay_power=3.0):
    """The release's mask built step by step as docs/data.md ("The FMix mask: release and isotropic")
    describes it.

    ``gaussian`` is the release's standard normal draw Z, shape [1, H, W', 2].
    """
    num_x = width // 2 + 1 if width % 2 == 0 else width // 2 + 2
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :num_x]
    scale = 1 / np.maximum(np.sqrt(fy ** 2 + fx ** 2), 1 / max(height, width)) ** decay_power
    z = gaussian * scale[None, :, :, None]
    spectrum = z[:, 0] + 1j * z[:, 1]  # [1, W', 2]: the first two rows
    noise = np.real(np.fft.irfftn(spectrum, s=(height, width), axes=(-2, -1)))[0]
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    num_ones = math.ceil(fraction * height * width) if round_up else math.floor(fraction * height * width)
    mask = np.zeros(height * width)
    mask[np.argsort(noise.reshape(-1))[::-1][:num_ones]] = 1
    return mask.reshape(height, width)


@pytest.mark.parametrize('height, width', [(40, 40), (16, 16), (7, 9), (5, 30), (33, 12), (40, 41)])
def test_release_mask_matches_the_construction_of_the_release(height, width):
    rng = np.random.default_rng(height * 100 + width)
    num_x = width // 2 + 1 if width % 2 == 0 else width // 2 + 2
    assert release_noise_shape(height, width) == (height, num_x, 2)
    for fraction, round_up in [(0.3, True), (0.3, False), (0.61, True), (0.05, False)]:
        gaussian = rng.standard_normal((1, height, num_x, 2))
        num_ones = (math.ceil if round_up else math.floor)(fraction * height * width)
        mask = binarise_noise(release_noise(gaussian[0], height, width), num_ones)
        expected = reference_release_mask(gaussian, height, width, fraction, round_up)
        assert mask.dtype == torch.float32 and mask.shape == (height, width)
        np.testing.assert_array_equal(mask.numpy(), expected)


@pytest.mark.parametrize('kind, one_cosine', [('release', True), ('isotropic', False)])
def test_only_release_noise_rows_are_one_cosine_period_along_x(kind, one_cosine):
    height, width = 24, 40
    noise_shape, construct = FMIX_MASKS[kind]
    noise = construct(np.random.default_rng(0).standard_normal(noise_shape(height, width)), height, width)
    x = 2 * np.pi * np.arange(width) / width
    basis = np.stack([np.ones(width), np.cos(x), np.sin(x)], 1)  # [W, 3]
    fitted = basis @ np.linalg.lstsq(basis, noise.T, rcond=None)[0]  # [W, H]
    assert (np.abs(fitted - noise.T).max() < 1e-9 * np.abs(noise).max()) == one_cosine


def mean_switches(kind, size=40, count=1500, seed=0):
    """Mean 0 <-> 1 switches per row and per column of ``count`` masks, lambda ~ U(0, 1) = Beta(1, 1)."""
    torch.manual_seed(seed)
    masks = torch.stack([fmix_mask(size, size, torch.rand(()).item(), kind) for _ in range(count)])
    per_row = (masks[..., 1:] != masks[..., :-1]).sum(-1).float().mean().item()
    per_column = (masks[:, 1:] != masks[:, :-1]).sum(1).float().mean().item()
    return per_row, per_column


def test_release_masks_switch_about_1_4_times_per_row_and_1_0_per_column():
    per_row, per_column = mean_switches('release')
    assert abs(per_row - 1.4) < 0.06 and abs(per_column - 1.0) < 0.06
    torch.manual_seed(1)
    for _ in range(50):  # one cosine period per row: its ones form one (cyclic) run
        mask = fmix_mask(40, 40, torch.rand(()).item(), 'release')
        assert (mask[:, 1:] != mask[:, :-1]).sum(1).max() <= 2


def test_isotropic_masks_switch_equally_often_along_both_axes():
    per_row, per_column = mean_switches('isotropic')
    assert abs(per_row - per_column) < 0.06 and 1.0 < per_row < 1.5


@pytest.mark.parametrize('kind, counts_seen', [('release', {378, 379}), ('isotropic', {379})])
def test_fmix_mask_area_is_lambda_rounded_as_the_construction_says(kind, counts_seen):
    # release: rounded up or down with equal chance; isotropic: rounded to the nearest
    torch.manual_seed(0)
    masks = [fmix_mask(32, 32, 0.37, kind) for _ in range(300)]
    assert all(set(mask.unique().tolist()) <= {0.0, 1.0} for mask in masks)
    counts = [int(mask.sum().item()) for mask in masks]  # 0.37 * 1024 = 378.88
    assert set(counts) == counts_seen
    assert abs(counts.count(379) / len(counts) - 1 / len(counts_seen)) < 0.1
    assert fmix_mask(40, 40, 0.5, kind).sum().item() == 800  # ceil, floor and round agree


@pytest.mark.parametrize('kind', KNOWN_FMIX_MASKS)
def test_fmix_masks_are_smooth(kind):
    torch.manual_seed(0)
    for fraction in (0.1, 0.37, 0.8):
        mask = fmix_mask(32, 32, fraction, kind)
        # a low-frequency mask has few boundaries compared with a random one of the same area
        edges = (mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum()
        shuffled = mask.flatten()[torch.randperm(32 * 32)].view(32, 32)
        random_edges = (shuffled[1:] != shuffled[:-1]).sum() + (shuffled[:, 1:] != shuffled[:, :-1]).sum()
        assert edges < 0.35 * random_edges


def test_the_config_choices_are_the_blender_constructions():
    assert set(FMIX_MASKS) == set(KNOWN_FMIX_MASKS)


def test_build_blender_follows_the_config():
    assert build_blender(tiny_config(AUG__MIXUP=0.0)) is None
    blender = build_blender(tiny_config())
    assert (blender.mixup_alpha, blender.fmix_alpha, blender.switch_probability, blender.label_smoothing,
            blender.num_classes, blender.fmix_mask_kind) == (0.8, 1.0, 0.5, 0.1, 7, 'release')
    assert build_blender(tiny_config(AUG__FMIX_MASK='isotropic')).fmix_mask_kind == 'isotropic'
