"""CLIP's building blocks, defined once and reused by the video model (``models/``).

Parameter names and shapes follow OpenAI's CLIP so that its weights load unchanged; attention runs
through ``F.scaled_dot_product_attention`` (fused kernels, no attention-weight matrix kept). All
modules here take batch-first tensors ``[N, L, W]`` (OpenAI's code is sequence-first; the state dict
does not depend on the layout).
"""
from collections import OrderedDict
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 (or wider) and cast back, so fp16/bf16 activations keep CLIP's
    numerics; fp32 and fp64 inputs pass through unchanged (fp64 reference runs of the model work)."""

    def forward(self, x):
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation ``x * sigmoid(1.702 x)``; the pretrained weights expect it."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class MultiheadAttention(nn.Module):
    """Packed-projection multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    Holds ``in_proj_weight`` [3W, W], ``in_proj_bias`` [3W] and ``out_proj`` (Linear W -> W), so a
    state dict of ``nn.MultiheadAttention`` loads unchanged, and initialises them the way PyTorch does
    (Xavier-uniform packed projection, zero biases).
    """

    def __init__(self, width, num_heads):
        super().__init__()
        if width % num_heads:
            raise ValueError(f'attention width {width} is not divisible by {num_heads} heads')
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x, is_causal=False):
        """Self-attention over ``x`` [N, L, W]; ``is_causal`` masks future tokens (text encoder)."""
        batch, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, length, 3, self.num_heads, width // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, heads, L, W / heads]
        out = F.scaled_dot_product_attention(query, key, value, is_causal=is_causal)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


def make_mlp(width, hidden_ratio=4):
    """CLIP's MLP: ``c_fc`` (W -> 4W), QuickGELU, ``c_proj`` (4W -> W)."""
    return nn.Sequential(OrderedDict([
        ('c_fc', nn.Linear(width, width * hidden_ratio)),
        ('gelu', QuickGELU()),
        ('c_proj', nn.Linear(width * hidden_ratio, width)),
    ]))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.

    Args:
        width: token width W.
        num_heads: attention heads.
        drop_path: stochastic-depth rate of both residual branches.
        norm_layer: LayerNorm class (CLIP's fp32 LayerNorm by default; ``nn.LayerNorm`` for msim).
        is_causal: causal self-attention (the text encoder).
    """

    def __init__(self, width, num_heads, drop_path=0.0, norm_layer=LayerNorm, is_causal=False):
        super().__init__()
        self.is_causal = is_causal
        self.attn = MultiheadAttention(width, num_heads)
        self.ln_1 = norm_layer(width)
        self.mlp = make_mlp(width)
        self.ln_2 = norm_layer(width)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.ln_1(x), is_causal=self.is_causal))
        return x + self.drop_path(self.mlp(self.ln_2(x)))


def drop_path_rates(max_rate, depth):
    """Linearly increasing stochastic-depth rates ``max_rate * i / (depth - 1)`` for blocks 0..depth-1."""
    if depth == 1:
        return [0.0]
    return [max_rate * i / (depth - 1) for i in range(depth)]


class Transformer(nn.Module):
    """A stack of residual blocks under the name ``resblocks`` (OpenAI's layout).

    Args:
        width: token width W.
        layers: number of blocks.
        heads: attention heads per block.
        drop_path_rate: stochastic depth of the last block; block i gets ``rate * i / (layers - 1)``.
        block_fn: block constructor ``block_fn(width, heads, drop_path=...)``; the video encoders pass
            their cross-frame block here.
        use_checkpoint: recompute each block's activations in backward instead of storing them.
        is_causal: causal attention (text encoder; only for the default block).
    """

    def __init__(self, width, layers, heads, drop_path_rate=0.0, block_fn=None, use_checkpoint=False,
                 is_causal=False):
        super().__init__()
        block_fn = block_fn or partial(ResidualAttentionBlock, is_causal=is_causal)
        self.width = width
        self.layers = layers
        self.use_checkpoint = use_checkpoint
        rates = drop_path_rates(drop_path_rate, layers)
        self.resblocks = nn.Sequential(*[block_fn(width, heads, drop_path=rate) for rate in rates])

    def forward(self, x):
        for block in self.resblocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class VisionTransformer(nn.Module):
    """CLIP's image tower: patchify, class token, positional embedding, ``ln_pre``, blocks, ``ln_post``,
    projection of the class token.

    The video encoders reuse :meth:`embed` and :meth:`project` and swap the blocks via ``block_fn``.
    """

    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim,
                 drop_path_rate=0.0, block_fn=None, use_checkpoint=False):
        super().__init__()
        if input_resolution % patch_size:
            raise ValueError(f'input resolution {input_resolution} is not a multiple of the patch size '
                             f'{patch_size}')
        self.input_resolution = input_resolution
        self.patch_size = patch_size
        self.output_dim = output_dim
        scale = width ** -0.5
        num_patches = (input_resolution // patch_size) ** 2
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(num_patches + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, drop_path_rate, block_fn, use_checkpoint)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def embed(self, images):
        """Images [N, 3, H, W] -> tokens [N, 1 + P, W] (class token first), after ``ln_pre``."""
        patches = self.conv1(images.to(self.conv1.weight.dtype))  # [N, W, H/p, W/p]
        patches = patches.flatten(2).transpose(1, 2)  # [N, P, W]
        class_token = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        tokens = torch.cat([class_token, patches], dim=1) + self.positional_embedding.to(patches.dtype)
        return self.ln_pre(tokens)

    def project(self, class_tokens):
        """Class tokens [..., W] -> image features [..., output_dim] (``ln_post`` then ``proj``)."""
        return self.ln_post(class_tokens) @ self.proj

    def forward(self, images):
        tokens = self.transformer(self.embed(images))
        return self.project(tokens[:, 0])
