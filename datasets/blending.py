"""Batch blending for training: mixup or FMix (switched per batch) with label smoothing.

FMix (Harris et al., 2020, https://arxiv.org/abs/2002.12047) pastes a region of the partner video
whose shape is a thresholded low-frequency Fourier noise image; one mask is shared by all frames of
the batch, so the blended region stays still over time.
"""
import logging

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


def low_frequency_mask(height, width, fraction, decay_power=FMIX_DECAY_POWER):
    """A binary FMix mask ``[H, W]`` whose ones cover ``round(fraction * H * W)`` pixels.

    Gaussian noise is shaped in the Fourier domain by ``1 / f ** decay_power`` (frequencies below
    ``1 / max(H, W)`` clamped), transformed back, and its largest values become the mask.
    """
    frequencies = torch.sqrt(torch.fft.fftfreq(height)[:, None] ** 2
                             + torch.fft.fftfreq(width)[None, :] ** 2)  # [H, W]
    scale = 1.0 / frequencies.clamp(min=1.0 / max(height, width)) ** decay_power
    spectrum = torch.complex(torch.randn(frequencies.shape), torch.randn(frequencies.shape)) * scale
    # the real part of a complex Gaussian field is a real field with the same spectrum; numpy's FFT
    # because torch's (MKL) stalls for milliseconds on small inputs when other jobs hold the cores
    noise = torch.from_numpy(np.fft.ifft2(spectrum.numpy()).real)  # [H, W]
    num_ones = round(fraction * height * width)
    mask = torch.zeros(height * width)
    mask[noise.flatten().argsort(descending=True)[:num_ones]] = 1.0
    return mask.view(height, width)


class BatchBlender:
    """Blend each training batch with a permutation of itself: FMix or mixup, with smoothed labels.

    With probability ``switch_probability`` a batch uses FMix (lambda ~ Beta(fmix_alpha, fmix_alpha),
    the label weight is the mask's exact area), otherwise mixup (lambda ~ Beta(mixup_alpha,
    mixup_alpha)). Targets: ``lambda * smooth(y) + (1 - lambda) * smooth(y[perm])``.

    Args:
        num_classes: K.
        mixup_alpha: mixup Beta parameter (``AUG.MIXUP``), > 0.
        fmix_alpha: FMix Beta parameter (``AUG.CUTMIX``); 0 disables FMix.
        switch_probability: probability of FMix for a batch (``AUG.MIXUP_SWITCH_PROB``).
        label_smoothing: smoothing of the one-hot targets (``AUG.LABEL_SMOOTH``).
    """

    def __init__(self, num_classes, mixup_alpha, fmix_alpha, switch_probability, label_smoothing):
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.fmix_alpha = fmix_alpha
        self.switch_probability = switch_probability
        self.label_smoothing = label_smoothing

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
            mask = low_frequency_mask(*videos.shape[-2:], self._beta(self.fmix_alpha))
            mask = mask.to(device=videos.device, dtype=videos.dtype)  # [H, W], shared by all frames
            blended = videos * mask + partners * (1 - mask)
            weight = mask.mean().item()
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
                        config.AUG.MIXUP_SWITCH_PROB, config.AUG.LABEL_SMOOTH)
