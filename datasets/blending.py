"""Batch blending for training: mixup or FMix (switched per batch) with label smoothing.

FMix (Harris et al., 2020, https://arxiv.org/abs/2002.12047) pastes a region of the partner video
whose shape is a thresholded low-frequency Fourier noise image; one mask is shared by all frames of
the batch, so the blended region stays still over time. Two mask constructions (``AUG.FMIX_MASK``):
the release's (the published recipe) and the isotropic one of the FMix paper (docs/data.md, "The FMix
mask: release and isotropic").
"""
import logging
import math

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Decay power of the FMix spectrum: higher keeps fewer high frequencies (smoother masks).
FMIX_DECAY_POWER = 3.0


def smooth_one_hot(labels, num_classes, smoothing):
    """Class indices ``[B]`` -> float targets ``[B, K]``: ``1 - s + s / K`` on the class, ``s / K`` off."""
    off_value = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off_value, device=labels.device)
    return targets.scatter_(1, labels[:, None], 1 - smoothing + off_value)


def _spectrum_scale(y_frequencies, x_frequencies, height, width, decay_power):
    """``1 / f ** decay_power`` on the frequency grid ``[len(y), len(x)]``, f clamped at ``1 / max(H, W)``."""
    frequencies = np.sqrt(y_frequencies[:, None] ** 2 + x_frequencies[None, :] ** 2)
    return 1.0 / np.maximum(frequencies, 1.0 / max(height, width)) ** decay_power


def release_noise_shape(height, width):
    """Shape ``(H, W', 2)`` of the Gaussian draw behind a release mask; W' counts its x frequencies."""
    # the release kept W // 2 + 1 x frequencies for an even W, one more for an odd W
    return height, width // 2 + 1 + width % 2, 2


def release_noise(gaussian, height, width, decay_power=FMIX_DECAY_POWER):
    """The noise image ``[H, W]`` behind the release's FMix mask (the published recipe).

    The release scales ``gaussian`` ``[H, W', 2]`` by the ``1 / f ** decay_power`` spectrum of an
    ``H x W'`` half-spectrum grid, but then takes its first two ROWS (not the two slices of the last
    axis) as the real and imaginary parts, a ``[W', 2]`` spectrum, and inverts it to ``H x W``:
    the ``W'`` axis becomes y (zero-padded or cut to H) and the axis of length 2 becomes x, with only
    x frequencies 0 and 1. So every row is one cosine period along x and the masks are anisotropic.

    Args:
        gaussian: standard normal array of shape ``release_noise_shape(height, width)``.
        height, width: the mask's size.
        decay_power: exponent of the spectrum's decay.

    Returns:
        np.ndarray: float64 ``[H, W]``.
    """
    x_frequencies = np.fft.fftfreq(width)[:gaussian.shape[1]]
    scale = _spectrum_scale(np.fft.fftfreq(height), x_frequencies, height, width, decay_power)  # [H, W']
    shaped = gaussian * scale[..., None]  # [H, W', 2]
    spectrum = shaped[0] + 1j * shaped[1]  # [W', 2]: rows 0 and 1 only
    # the release min-max normalises here; the binarisation keeps the largest values, so it is skipped
    return np.fft.irfftn(spectrum, s=(height, width), axes=(0, 1))  # [H, W]


def isotropic_noise_shape(height, width):
    """Shape ``(H, W, 2)`` of the Gaussian draw behind an isotropic mask (real and imaginary parts)."""
    return height, width, 2


def isotropic_noise(gaussian, height, width, decay_power=FMIX_DECAY_POWER):
    """The noise image ``[H, W]`` of the FMix paper: isotropic low-frequency noise.

    A complex Gaussian spectrum on the full ``H x W`` frequency grid, scaled by ``1 / f ** decay_power``;
    the real part of its inverse transform is a real field with that spectrum, smooth in every direction.

    Args:
        gaussian: standard normal array of shape ``isotropic_noise_shape(height, width)``.
        height, width: the mask's size.
        decay_power: exponent of the spectrum's decay.

    Returns:
        np.ndarray: float64 ``[H, W]``.
    """
    scale = _spectrum_scale(np.fft.fftfreq(height), np.fft.fftfreq(width), height, width, decay_power)
    return np.fft.ifft2((gaussian[..., 0] + 1j * gaussian[..., 1]) * scale).real


# AUG.FMIX_MASK -> (shape of the Gaussian draw, noise construction)
FMIX_MASKS = {'release': (release_noise_shape, release_noise),
              'isotropic': (isotropic_noise_shape, isotropic_noise)}


def binarise_noise(noise, num_ones):
    """A float32 ``[H, W]`` mask: ones at the ``num_ones`` largest values of ``noise``, zeros elsewhere."""
    mask = np.zeros(noise.size, dtype=np.float32)
    mask[np.argsort(noise, axis=None)[::-1][:num_ones]] = 1.0
    return torch.from_numpy(mask.reshape(noise.shape))


def fmix_mask(height, width, fraction, kind, decay_power=FMIX_DECAY_POWER):
    """A random binary FMix mask ``[H, W]`` covering about ``fraction`` of the pixels.

    Args:
        height, width: the mask's size.
        fraction: lambda, the share of ones: ``fraction * H * W`` rounded up or down with probability 1/2
            for 'release' (as the release does), to the nearest integer for 'isotropic'.
        kind: a key of ``FMIX_MASKS`` (``AUG.FMIX_MASK``): 'release' or 'isotropic'.
        decay_power: exponent of the spectrum's decay.
    """
    noise_shape, construct = FMIX_MASKS[kind]
    # numpy's FFT: torch's (MKL) stalls for milliseconds on small inputs when other jobs hold the cores
    gaussian = torch.randn(noise_shape(height, width), dtype=torch.float64).numpy()
    num_ones = fraction * height * width
    if kind == 'release':
        num_ones = math.ceil(num_ones) if torch.rand(()).item() < 0.5 else math.floor(num_ones)
    return binarise_noise(construct(gaussian, height, width, decay_power), round(num_ones))


class BatchBlender:
    """Blend each training batch with a permutation of itself: FMix or mixup, with smoothed labels.

    With probability ``switch_probability`` a batch uses FMix (lambda ~ Beta(fmix_alpha, fmix_alpha),
    the labels blended with that lambda), otherwise mixup (lambda ~ Beta(mixup_alpha,
    mixup_alpha)). Targets: ``lambda * smooth(y) + (1 - lambda) * smooth(y[perm])``.

    Args:
        num_classes: K.
        mixup_alpha: mixup Beta parameter (``AUG.MIXUP``), > 0.
        fmix_alpha: FMix Beta parameter (``AUG.CUTMIX``); 0 disables FMix.
        switch_probability: probability of FMix for a batch (``AUG.MIXUP_SWITCH_PROB``).
        label_smoothing: smoothing of the one-hot targets (``AUG.LABEL_SMOOTH``).
        fmix_mask_kind: FMix mask construction, a key of ``FMIX_MASKS`` (``AUG.FMIX_MASK``).
    """

    def __init__(self, num_classes, mixup_alpha, fmix_alpha, switch_probability, label_smoothing,
                 fmix_mask_kind):
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.fmix_alpha = fmix_alpha
        self.switch_probability = switch_probability
        self.label_smoothing = label_smoothing
        self.fmix_mask_kind = fmix_mask_kind

    def _beta(self, alpha):
        return torch.distributions.Beta(alpha, alpha).sample().item()

    def __call__(self, videos, labels):
        """Blend a batch.

        Args:
            videos: float ``[B, T, 3, H, W]``.
            labels: int64 ``[B]``.

        Returns:
            tuple: blended videos ``[B, T, 3, H, W]`` and soft targets ``[B, K]`` (rows sum to 1).
        """
        permutation = torch.randperm(videos.shape[0]).to(videos.device)
        partners = videos.index_select(0, permutation)  # (indexing with [] stalls in OpenMP on CPU)
        use_fmix = self.fmix_alpha > 0 and torch.rand(()).item() < self.switch_probability
        if use_fmix:
            # the labels are blended with the drawn lambda, as the release does (the mask's area differs
            # by its rounding, under one pixel's share; reading it would also wait for the device)
            weight = self._beta(self.fmix_alpha)
            mask = fmix_mask(*videos.shape[-2:], weight, self.fmix_mask_kind)
            mask = mask.to(device=videos.device, dtype=videos.dtype)  # [H, W], shared by all frames
            blended = videos * mask + partners * (1 - mask)
        else:
            weight = self._beta(self.mixup_alpha)
            blended = videos * weight + partners * (1 - weight)
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        return blended, targets * weight + targets.index_select(0, permutation) * (1 - weight)


def build_blender(config):
    """The config's ``BatchBlender``, or None when ``AUG.MIXUP`` is 0 (no batch blending)."""
    if config.AUG.MIXUP <= 0:
        return None
    return BatchBlender(config.DATA.NUM_CLASSES, config.AUG.MIXUP, config.AUG.CUTMIX,
                        config.AUG.MIXUP_SWITCH_PROB, config.AUG.LABEL_SMOOTH, config.AUG.FMIX_MASK)
