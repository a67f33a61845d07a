"""Batch blending: soft labels, smoothing values, lambda distributions (against scipy's Beta), the
mixup / FMix switch, and one FMix mask shared by all frames."""
import pytest
import torch
from scipy import stats

from conftest import tiny_config
from datasets.blending import BatchBlender, build_blender, low_frequency_mask, smooth_one_hot

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
    blender = BatchBlender(K, 0.8, 1.0, 0.5, SMOOTHING)
    draws, labels = swapped_draws(blender, 60)
    own = smooth_one_hot(labels, K, SMOOTHING)
    for blended, targets in draws:
        torch.testing.assert_close(targets.sum(1), torch.ones(2))
        weight = 1 - blended[0].mean().item()  # share of video 0 in blended video 0
        torch.testing.assert_close(targets[0], weight * own[0] + (1 - weight) * own[1])
        torch.testing.assert_close(targets[1], weight * own[1] + (1 - weight) * own[0])


def test_fmix_and_mixup_are_switched_with_the_configured_probability():
    draws, _ = swapped_draws(BatchBlender(K, 0.8, 1.0, 0.5, SMOOTHING), 400, seed=1)
    fmix_share = sum(is_fmix(blended) for blended, _ in draws) / len(draws)
    assert abs(fmix_share - 0.5) < 0.08
    draws, _ = swapped_draws(BatchBlender(K, 0.8, 0.0, 0.5, SMOOTHING), 50)  # FMix off
    assert not any(is_fmix(blended) for blended, _ in draws)


@pytest.mark.parametrize('switch_probability, alpha', [(0.0, 0.8), (1.0, 1.0)])
def test_lambda_follows_the_beta_distribution(switch_probability, alpha):
    blender = BatchBlender(K, 0.8, 1.0, switch_probability, SMOOTHING)
    draws, _ = swapped_draws(blender, 400, seed=2)
    lambdas = [1 - blended[0].mean().item() for blended, _ in draws]
    assert all(0 <= value <= 1 for value in lambdas)
    # FMix's label weight is the mask's exact area, round(lambda * H * W) / (H * W): a 16 x 16 grid
    assert stats.kstest(lambdas, stats.beta(alpha, alpha).cdf).pvalue > 0.01


def test_one_fmix_mask_is_shared_by_all_frames_and_channels():
    draws, _ = swapped_draws(BatchBlender(K, 0.8, 1.0, 1.0, SMOOTHING), 20)
    for blended, _ in draws:
        mask = blended[0, 0, 0]  # [H, W]: 1 where video 0 took its partner's pixels
        assert (blended[0] == mask).all()  # every frame and channel
        assert torch.equal(blended[1], 1 - blended[0])  # the partner got the complement


def test_low_frequency_mask_area_and_smoothness():
    torch.manual_seed(0)
    for fraction in (0.1, 0.37, 0.8):
        mask = low_frequency_mask(32, 32, fraction)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert mask.sum().item() == round(fraction * 32 * 32)
        # a low-frequency mask has few boundaries compared with a random one of the same area
        edges = (mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum()
        shuffled = mask.flatten()[torch.randperm(32 * 32)].view(32, 32)
        random_edges = (shuffled[1:] != shuffled[:-1]).sum() + (shuffled[:, 1:] != shuffled[:, :-1]).sum()
        assert edges < 0.35 * random_edges


def test_build_blender_follows_the_config():
    assert build_blender(tiny_config(AUG__MIXUP=0.0)) is None
    blender = build_blender(tiny_config())
    assert (blender.mixup_alpha, blender.fmix_alpha, blender.switch_probability,
            blender.label_smoothing, blender.num_classes) == (0.8, 1.0, 0.5, 0.1, 7)
