"""Cross-frame attention through message tokens, and DK-CLIP's two vision encoders built from it.

Paper: Ni et al., "Expanding Language-Image Pretrained Models for General Video Recognition" (X-CLIP,
ECCV 2022), https://arxiv.org/abs/2208.02816. DK-CLIP (ACM MM 2024) applies the block within each
snippet (``visual``) and across the snippets of a video (``visual_semantic``); docs/model.md,
"Local cross-frame encoder" and "Snippet integration encoder".

Order: block, local video encoder, snippet integration encoder.
"""
from functools import partial

import torch
from torch import nn

from clip.layers import LayerNorm, MultiheadAttention, ResidualAttentionBlock, VisionTransformer


class CrossFrameBlock(ResidualAttentionBlock):
    """CLIP's residual block plus a message token per frame that attends across a group of frames.

    The batch holds ``group_size`` consecutive rows per group (the F frames of a snippet, or the S
    snippets of a video), so the grouping is a reshape and the whole batch runs at once. Stochastic
    depth drops per row (per frame) in the token branch and per group in the message branch.

    Args:
        width: token width W.
        num_heads: heads of ``attn`` and ``message_attn``.
        drop_path: stochastic-depth rate of the residual branches.
        group_size: rows whose message tokens attend to each other.
    """

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
    """``visual``: CLIP's ViT (OpenAI's names, so CLIP weights load) with cross-frame blocks whose
    message tokens attend across the F frames of one snippet.

    Args:
        input_resolution, patch_size, width, layers, heads, output_dim: CLIP ViT dimensions.
        frames_per_snippet: F; the frames of a snippet are consecutive rows of the input.
        drop_path_rate: stochastic depth of the last block (linear ramp from 0).
        use_checkpoint: activation checkpointing over the blocks.
    """

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
    """``visual_semantic``: a ViT without patchify over the pooled patch tokens of each snippet, with
    cross-frame blocks whose message tokens attend across the S snippets of one video.

    Its parameters (other than ``conv1``, which it lacks) are named and initialised like CLIP's image
    tower, but they are not copied from CLIP (as released). ``ln_post`` and ``proj`` exist only for
    checkpoint compatibility: the forward pass returns patch tokens, never the class output.

    Args:
        input_resolution, patch_size: give the number of patch tokens P.
        width, layers, heads, output_dim: ViT dimensions (``output_dim`` sizes the unused ``proj``).
        num_snippets: S; the snippets of a video are consecutive rows of the input.
        drop_path_rate: stochastic depth of the last block (linear ramp from 0).
        use_checkpoint: activation checkpointing over the blocks.
    """

    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim, *, num_snippets,
                 drop_path_rate, use_checkpoint):
        block_fn = partial(CrossFrameBlock, group_size=num_snippets)
        super().__init__(input_resolution, patch_size, width, layers, heads, output_dim,
                         drop_path_rate=drop_path_rate, block_fn=block_fn, use_checkpoint=use_checkpoint)
        del self.conv1  # the input is already tokens; the release has no conv1 here

    def forward(self, patch_tokens):
        """Pooled patch tokens [B * S, P, W] (each video's S snippets consecutive) -> [B * S, P, W]."""
        return self.transformer(self.embed_patches(patch_tokens))[:, 1:]
