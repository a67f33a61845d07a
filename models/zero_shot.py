"""Zero-shot CLIP on videos: CLIP's own image and text encoders, no training.

The baseline of EmoCLIP's zero-shot protocol (Foteinopoulou and Patras, "EmoCLIP: A Vision-Language
Method for Zero-Shot Video Facial Expression Recognition", FG 2024, https://arxiv.org/abs/2310.16640):
every sampled frame of a clip goes through CLIP's image encoder, the clip's feature is the mean of its
frames' features, and it is scored against the class prompts' text features (docs/model.md, section 16).

Order: model, builder.
"""
import torch.nn.functional as F
from torch import nn

import clip

from .builder import clip_dims_for_input, fit_positional_embedding


class ZeroShotCLIP(nn.Module):
    """CLIP scoring videos against class prompts, with the evaluation contract of DK-CLIP.

    ``forward`` returns what ``utils.engine.evaluate`` reads from DK-CLIP: the video-level logits (the
    ``global`` head), no snippet logits (no ``local`` head) and the video features.
    """

    def __init__(self, clip_model):
        super().__init__()
        self.clip = clip_model

    def encode_video(self, videos):
        """Videos ``[B, T, 3, H, W]`` (normalised) -> L2-normalised video features ``[B, E]``: the mean of
        the frames' CLIP image features."""
        frame_features = self.clip.encode_image(videos.flatten(0, 1))  # [B * T, E]
        video_features = frame_features.unflatten(0, videos.shape[:2]).mean(dim=1)  # [B, E]
        return F.normalize(video_features.float(), dim=-1)

    def encode_prompts(self, text_tokens):
        """Class-prompt tokens ``[K, 77]`` -> L2-normalised text features ``[K, E]``."""
        return F.normalize(self.clip.encode_text(text_tokens).float(), dim=-1)

    def forward(self, videos, text_tokens, return_details=False):
        """Score videos ``[B, T, 3, H, W]`` against the prompts ``[K, 77]``.

        Returns:
            ``(logits [B, K], None, video features [B, E])``: CLIP's logit scale times the cosine
            similarities; with ``return_details`` the same as a dict (``logits_global``,
            ``logits_local``, ``video_features``).
        """
        video_features = self.encode_video(videos)
        text_features = self.encode_prompts(text_tokens)
        logits = self.clip.logit_scale.exp().float() * video_features @ text_features.t()  # [B, K]
        details = dict(logits_global=logits, logits_local=None, video_features=video_features)
        if return_details:
            return details
        return logits, None, video_features


def build_zero_shot_model(config, clip_state_dict):
    """Zero-shot CLIP from OpenAI-format weights, for ``DATA.INPUT_SIZE`` inputs.

    Args:
        config: the project's config (``DATA.INPUT_SIZE``; CLIP's positional embedding is resampled
            when it differs from the weights' resolution).
        clip_state_dict: CLIP ViT weights, e.g. from ``models.builder.load_clip_state_dict``.

    Returns:
        ZeroShotCLIP: fp32, on the CPU, in eval mode.
    """
    dims = clip_dims_for_input(config, clip_state_dict)
    clip_model = clip.build_from_dims(dims)
    state_dict = fit_positional_embedding(clip_state_dict, dims.num_patches + 1)
    clip_model.load_state_dict({name: value.float() for name, value in state_dict.items()})
    return ZeroShotCLIP(clip_model).eval()
