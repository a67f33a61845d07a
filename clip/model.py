"""OpenAI CLIP (ViT variants; Radford et al. 2021, https://arxiv.org/abs/2103.00020), weight-compatible
with OpenAI's checkpoints."""
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .layers import LayerNorm, Transformer, VisionTransformer, attention_heads

# Entries of OpenAI's files that are not parameters.
NON_PARAMETER_KEYS = ('input_resolution', 'context_length', 'vocab_size')


@dataclass(frozen=True)
class CLIPDims:
    """The dimensions that define a CLIP ViT model (OpenAI's ``build_model`` arguments)."""

    embed_dim: int
    image_resolution: int
    vision_layers: int
    vision_width: int
    vision_patch_size: int
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_layers: int = 12

    @property
    def vision_heads(self):
        return attention_heads(self.vision_width)

    @property
    def transformer_heads(self):
        return attention_heads(self.transformer_width)

    @property
    def num_patches(self):
        return (self.image_resolution // self.vision_patch_size) ** 2


# Dimensions of OpenAI's published ViT models.
KNOWN_DIMS = {
    'ViT-B/32': CLIPDims(512, 224, 12, 768, 32, transformer_width=512),
    'ViT-B/16': CLIPDims(512, 224, 12, 768, 16, transformer_width=512),
    'ViT-L/14': CLIPDims(768, 224, 24, 1024, 14, transformer_width=768),
    'ViT-L/14@336px': CLIPDims(768, 336, 24, 1024, 14, transformer_width=768),
}


class CLIPTextTower(nn.Module):
    """CLIP's text encoder and ``logit_scale``, under OpenAI's top-level names.

    Both :class:`CLIP` and the DK-CLIP video model derive from it, so the text path exists once.
    Parameters: ``token_embedding``, ``positional_embedding`` [77, W], ``transformer`` (causal),
    ``ln_final``, ``text_projection`` [W, E], ``logit_scale`` (log of 1 / 0.07 at initialisation).
    """

    def __init__(self, embed_dim, context_length, vocab_size, transformer_width, transformer_heads,
                 transformer_layers):
        super().__init__()
        self.context_length = context_length
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads,
                                       is_causal=True)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
        self.initialize_text_parameters()

    def initialize_text_parameters(self):
        """OpenAI's initialisation of the text tower (used when no pretrained weights are loaded)."""
        width, layers = self.transformer.width, self.transformer.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = (width ** -0.5) * ((2 * layers) ** -0.5)
        attn_std = width ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    def encode_text(self, tokens):
        """Token ids [N, 77] -> text features [N, E] (the end-of-text token's output, projected)."""
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.ln_final(self.transformer(x))
        # The end-of-text token has the largest id in every sequence.
        end_of_text = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return end_of_text @ self.text_projection


class CLIP(CLIPTextTower):
    """CLIP with a ViT image tower (``visual``), OpenAI's names and forward contract."""

    def __init__(self, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                 context_length, vocab_size, transformer_width, transformer_heads, transformer_layers):
        super().__init__(embed_dim, context_length, vocab_size, transformer_width, transformer_heads,
                         transformer_layers)
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        attention_heads(vision_width), embed_dim)

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def encode_image(self, images):
        """Images [N, 3, H, W] (normalised) -> image features [N, E]."""
        return self.visual(images)

    def forward(self, images, tokens):
        """Return ``(logits_per_image [N_img, N_txt], logits_per_text [N_txt, N_img])``."""
        image_features = self.encode_image(images)
        text_features = self.encode_text(tokens)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


def clip_dims_from_state_dict(state_dict):
    """Infer :class:`CLIPDims` from an OpenAI-format state dict, as OpenAI's ``build_model`` does.

    Raises:
        ValueError: the state dict is not a CLIP ViT (e.g. a ResNet CLIP, or missing entries).
    """
    if 'visual.layer1.0.conv1.weight' in state_dict:
        raise ValueError('ResNet CLIP weights are not supported: DK-CLIP needs a ViT CLIP model')
    required = ('visual.conv1.weight', 'visual.positional_embedding', 'text_projection',
                'positional_embedding', 'token_embedding.weight', 'ln_final.weight')
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise ValueError(f'not a CLIP ViT state dict: missing {missing}')
    vision_width, _, patch_size, _ = state_dict['visual.conv1.weight'].shape
    grid = round((state_dict['visual.positional_embedding'].shape[0] - 1) ** 0.5)
    return CLIPDims(
        embed_dim=state_dict['text_projection'].shape[1],
        image_resolution=patch_size * grid,
        vision_layers=_count_blocks(state_dict, 'visual.transformer.resblocks.'),
        vision_width=vision_width,
        vision_patch_size=patch_size,
        context_length=state_dict['positional_embedding'].shape[0],
        vocab_size=state_dict['token_embedding.weight'].shape[0],
        transformer_width=state_dict['ln_final.weight'].shape[0],
        transformer_layers=_count_blocks(state_dict, 'transformer.resblocks.'),
    )


def _count_blocks(state_dict, prefix):
    return len({key[len(prefix):].split('.')[0] for key in state_dict if key.startswith(prefix)})


def build_from_dims(dims):
    """An initialised (random) CLIP of the given :class:`CLIPDims`."""
    fields = asdict(dims)
    return CLIP(transformer_heads=dims.transformer_heads, **fields)


def build_model(state_dict):
    """A CLIP ViT (eval mode, fp32) from an OpenAI-format state dict, its dimensions inferred."""
    state_dict = {k: v for k, v in state_dict.items() if k not in NON_PARAMETER_KEYS}
    model = build_from_dims(clip_dims_from_state_dict(state_dict))
    model.load_state_dict({k: v.float() for k, v in state_dict.items()})
    return model.eval()
