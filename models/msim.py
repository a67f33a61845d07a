"""Multi-snippet integration (``msim``): X-CLIP's multi-frame integration transformer over the snippet
features, which gives the video feature (docs/model.md, section 7)."""
import torch
from timm.models.vision_transformer import init_weights_vit_timm
from torch import nn

from clip.layers import ResidualAttentionBlock, attention_heads


class MultiSnippetIntegration(nn.Module):
    """Positional embedding, ``layers`` pre-LN blocks (plain ``nn.LayerNorm``, E / 64 heads), a residual
    around the whole module, mean over the S snippets; initialised as docs/model.md, section 14."""

    def __init__(self, num_snippets, embed_dim, layers, position_init_std=0.02):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(1, num_snippets, embed_dim))
        heads = attention_heads(embed_dim)
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(embed_dim, heads, norm_layer=nn.LayerNorm)
                                         for _ in range(layers)])
        nn.init.trunc_normal_(self.positional_embedding, std=position_init_std)
        self.apply(init_weights_vit_timm)

    def forward(self, snippet_features):
        """Snippet features [B, S, E] -> video features [B, E] (not normalised)."""
        x = self.resblocks(snippet_features + self.positional_embedding.to(snippet_features.dtype))
        return (x.to(snippet_features.dtype) + snippet_features).mean(dim=1)
