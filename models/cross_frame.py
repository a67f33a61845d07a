"""Cross-frame attention through message tokens (X-CLIP, https://arxiv.org/abs/2208.02816) and DK-CLIP's
two vision encoders built from it: within each snippet (``visual``) and across the snippets of a video
(``visual_semantic``); docs/model.md, sections 4 and 6.
"""
from functools import partial

import torch
from torch import nn

from clip.layers import LayerNorm, MultiheadAttention, ResidualAttentionBlock, VisionTransformer


class CrossFrameBlock(ResidualAttentionBlock):
    """CLIP's residual block plus a message token per frame that attends across the ``group_size``
    consecutive rows of its group (the F frames of a snippet, or the S snippets of a video)."""

    def __init__(self, width, num_heads, drop_path=0.0, *, group_size):
        super().__init__(width, num_heads, drop_path)
        self.group_size = group_size
        self.message_fc = nn.Linear(width, width)
        self.message_ln = LayerNorm(width)
        self.message_attn = MultiheadAttention(width, num_heads)

    def forward(self, x):
        """Tokens [N * G, L, W] (class token first) -> [N * G, L, W]."""
        rows, length, width = x.shape
        message = self.message_fc(x[:, 0]).view(-1, self.group_size, width)  # [N, G, W]
        message = message + self.drop_path(self.message_attn(self.message_ln(message)))
        x = torch.cat([x, message.reshape(rows, 1, width)], dim=1)  # [N * G, L + 1, W]
        x = x + self.drop_path(self.attn(self.ln_1(x)))
        x = x[:, :length]  # the message token has done its work
        return x + self.drop_path(self.mlp(self.ln_2(x)))


class LocalVideoEncoder(VisionTransformer):
    """``visual``: CLIP's ViT under OpenAI's names, with cross-frame blocks over the F frames of a
    snippet."""

    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim, *,
                 frames_per_snippet, drop_path_rate, use_checkpoint):
        block_fn = partial(CrossFrameBlock, group_size=frames_per_snippet)
        super().__init__(input_resolution, patch_size, width, layers, heads, output_dim,
                         drop_path_rate=drop_path_rate, block_fn=block_fn, use_checkpoint=use_checkpoint)

    def forward(self, frames):
        """Frames [B * T, 3, H, W] (each video's T frames consecutive) -> ``(class_features [B * T, E],
        patch_tokens [B * T, P, W])``; the patch tokens get no ``ln_post``."""
        tokens = self.transformer(self.embed(frames))  # [B * T, 1 + P, W]
        return self.project(tokens[:, 0]), tokens[:, 1:]


class SnippetIntegrationEncoder(VisionTransformer):
    """``visual_semantic``: a ViT without patchify over each snippet's pooled patch tokens, with
    cross-frame blocks over the S snippets of a video. Not initialised from CLIP (as released);
    ``ln_post`` and ``proj`` exist for checkpoint compatibility only."""

    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim, *, num_snippets,
                 drop_path_rate, use_checkpoint):
        block_fn = partial(CrossFrameBlock, group_size=num_snippets)
        super().__init__(input_resolution, patch_size, width, layers, heads, output_dim,
                         drop_path_rate=drop_path_rate, block_fn=block_fn, use_checkpoint=use_checkpoint)
        del self.conv1  # the input is already tokens; the release has no conv1 here

    def forward(self, patch_tokens):
        """Pooled patch tokens [B * S, P, W] (each video's S snippets consecutive) -> [B * S, P, W]."""
        return self.transformer(self.embed_patches(patch_tokens))[:, 1:]
