"""Video-specific prompt generator (``prompts_generator_cmam``): X-CLIP's video-specific prompting, the
class prompts attending to the video's snippet tokens (docs/model.md, section 10)."""
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import init_weights_vit_timm
from torch import nn

from clip.layers import QuickGELU, attention_heads


class CrossAttention(nn.Module):
    """Multi-head cross attention with separate projections ``q_proj``, ``k_proj``, ``v_proj`` (no
    bias) and an output projection ``proj`` (with bias), the release's names."""

    def __init__(self, width, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.proj = nn.Linear(width, width)

    def _split_heads(self, x):
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, heads, L, E / heads]

    def forward(self, queries, context):
        """Queries [B, K, E] attend to context [B, P, E] -> [B, K, E]."""
        attended = F.scaled_dot_product_attention(self._split_heads(self.q_proj(queries)),
                                                  self._split_heads(self.k_proj(context)),
                                                  self._split_heads(self.v_proj(context)))
        return self.proj(attended.transpose(1, 2).flatten(2))


class PromptGeneratorLayer(nn.Module):
    """``t + cross_attn(norm1(t), context)``, then ``t + mlp(norm3(t))`` (MLP E -> 4E -> E)."""

    def __init__(self, width, num_heads):
        super().__init__()
        self.cross_attn = CrossAttention(width, num_heads)
        self.norm1 = nn.LayerNorm(width)
        self.norm3 = nn.LayerNorm(width)
        # Dropout 0 as released; the layer stays so that the MLP's indices (mlp.0, mlp.3) match.
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), QuickGELU(), nn.Dropout(0.0),
                                 nn.Linear(4 * width, width))

    def forward(self, text, context):
        text = text + self.cross_attn(self.norm1(text), context)
        return text + self.mlp(self.norm3(text))


class VideoSpecificPromptGenerator(nn.Module):
    """``G(t, ctx) = alpha * decoder(t, norm(ctx))``: per-video offsets of the class-prompt features, with
    a learnable per-channel ``alpha`` [E] (initial ``alpha_init``)."""

    def __init__(self, embed_dim, layers, alpha_init):
        super().__init__()
        heads = attention_heads(embed_dim)
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder = nn.ModuleList([PromptGeneratorLayer(embed_dim, heads) for _ in range(layers)])
        self.alpha = nn.Parameter(torch.full((embed_dim,), float(alpha_init)))
        self.apply(init_weights_vit_timm)

    def forward(self, text_features, context):
        """Class-prompt features [K, E] and video context [B, P, E] -> prompt offsets [B, K, E]."""
        context = self.norm(context)
        text = text_features.expand(context.shape[0], -1, -1)  # [B, K, E]
        for layer in self.decoder:
            text = layer(text, context)
        return self.alpha * text
