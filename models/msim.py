"""Multi-snippet integration (``msim``): snippet class features -> one video feature (docs/model.md,
"Multi-snippet integration").

The X-CLIP multi-frame integration transformer applied to snippets: positional embedding, pre-LN
residual attention blocks with plain ``nn.LayerNorm``, a residual around the whole module, mean over
the snippets.
"""
import torch
from timm.models.vision_transformer import init_weights_vit_timm
from torch import nn

from clip.layers import ResidualAttentionBlock, attention_heads


class MultiSnippetIntegration(nn.Module):
    """Temporal transformer over the S snippet features of a video, averaged into a video feature.

    Initialisation (docs/model.md, "Initialisation"): positional embedding and every ``nn.Linear``
    weight (attention's ``out_proj`` included) truncated-normal 0.02 with zero biases, LayerNorms 1/0;
    the packed ``attn.in_proj_weight`` keeps PyTorch's Xavier initialisation.

    Args:
        num_snippets: S.
        embed_dim: E; heads = E / 64.
        layers: number of residual attention blocks.
        position_init_std: std of the positional embedding's truncated normal (cut at +-2), 0.02 as
            released (``MODEL.MSIM_POS_INIT_STD``).
    """

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
