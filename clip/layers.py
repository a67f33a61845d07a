"""CLIP's building blocks under OpenAI's parameter names, reused by the video model; batch-first tensors
``[N, L, W]`` (docs/model.md, section 3)."""
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint


# Devices whose native 16-bit LayerNorm kernel sums in fp32 (see LayerNorm).
NATIVE_16BIT_LAYER_NORM_DEVICES = ('cuda',)


class LayerNorm(nn.LayerNorm):
    """CLIP's fp32-safe LayerNorm: statistics of 16-bit activations in fp32 (on CUDA by the native 16-bit
    kernel, elsewhere by upcasting; docs/model.md, section 15)."""

    def forward(self, x):
        if x.dtype not in (torch.float16, torch.bfloat16):
            return super().forward(x)
        if x.device.type not in NATIVE_16BIT_LAYER_NORM_DEVICES:
            return super().forward(x.float()).to(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype),
                                self.eps)


def attention_heads(width):
    """CLIP's number of attention heads for a token width: one per 64 channels."""
    return max(1, width // 64)


# QuickGELU(h) = h * sigmoid(QUICK_GELU_SCALE * h).
QUICK_GELU_SCALE = 1.702


class QuickGELU(nn.Module):
    """OpenAI CLIP's GELU approximation ``x * sigmoid(1.702 x)``; the pretrained weights expect it."""

    def forward(self, x):
        return x * torch.sigmoid(QUICK_GELU_SCALE * x)


class MultiheadAttention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``, with the parameter names and
    initialisation of ``nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``, ``out_proj``)."""

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


class MLP(nn.Module):
    """CLIP's MLP ``c_proj(QuickGELU(c_fc(x)))`` (W -> 4W -> W), computed as SiLU with the 1.702 folded
    into the weights (docs/performance.md, "CLIP's MLP as SiLU")."""

    def __init__(self, width, hidden_ratio=4):
        super().__init__()
        self.c_fc = nn.Linear(width, width * hidden_ratio)
        self.c_proj = nn.Linear(width * hidden_ratio, width)

    def forward(self, x):
        hidden = F.linear(x, self.c_fc.weight * QUICK_GELU_SCALE, self.c_fc.bias * QUICK_GELU_SCALE)
        return F.linear(F.silu(hidden), self.c_proj.weight * (1 / QUICK_GELU_SCALE), self.c_proj.bias)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``, with stochastic depth
    ``drop_path`` on both branches."""

    def __init__(self, width, num_heads, drop_path=0.0, norm_layer=LayerNorm, is_causal=False):
        super().__init__()
        self.is_causal = is_causal
        self.attn = MultiheadAttention(width, num_heads)
        self.ln_1 = norm_layer(width)
        self.mlp = MLP(width)
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
    """``resblocks``: ``layers`` blocks made by ``block_fn(width, heads, drop_path=...)`` (the video
    encoders pass their cross-frame block), stochastic depth ramping to ``drop_path_rate``, optional
    activation checkpointing."""

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
    projection of the class token."""

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

    def patchify(self, images):
        """Images [N, 3, H, W] -> patch embeddings [N, P, W]: ``conv1`` as one matrix product
        (docs/performance.md, "Patch embedding as one matrix product")."""
        batch, channels, height, width = images.shape
        p = self.patch_size
        patches = images.reshape(batch, channels, height // p, p, width // p, p)
        # [N, H/p, W/p, C, p, p]: each patch's values in conv1.weight's (channel, row, column) order
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * p * p)
        weight = self.conv1.weight
        return F.linear(patches.to(weight.dtype), weight.flatten(1))

    def embed(self, images):
        """Images [N, 3, H, W] -> tokens [N, 1 + P, W] (class token first), after ``ln_pre``."""
        return self.embed_patches(self.patchify(images))

    def embed_patches(self, patches):
        """Patch embeddings [N, P, W] -> tokens [N, 1 + P, W], class token first, after ``ln_pre``."""
        class_token = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        tokens = torch.cat([class_token, patches], dim=1) + self.positional_embedding.to(patches.dtype)
        return self.ln_pre(tokens)

    def project(self, class_tokens):
        """Class tokens [..., W] -> image features [..., output_dim] (``ln_post`` then ``proj``)."""
        return self.ln_post(class_tokens) @ self.proj

    def forward(self, images):
        tokens = self.transformer(self.embed(images))
        return self.project(tokens[:, 0])
