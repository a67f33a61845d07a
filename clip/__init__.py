"""OpenAI CLIP, written for this project: the API of OpenAI's ``clip`` package, weight-compatible."""
from .clip import available_models, cache_dir, download, load, load_state_dict, resolve_model_path
from .layers import (LayerNorm, MultiheadAttention, QuickGELU, ResidualAttentionBlock, Transformer,
                     VisionTransformer)
from .model import CLIP, KNOWN_DIMS, CLIPDims, CLIPTextTower, build_from_dims, build_model, \
    clip_dims_from_state_dict
from .tokenizer import tokenize

__all__ = ['available_models', 'cache_dir', 'download', 'load', 'load_state_dict', 'resolve_model_path',
           'tokenize', 'build_model', 'build_from_dims', 'clip_dims_from_state_dict', 'CLIP', 'CLIPDims',
           'CLIPTextTower', 'KNOWN_DIMS', 'LayerNorm', 'MultiheadAttention', 'QuickGELU',
           'ResidualAttentionBlock', 'Transformer', 'VisionTransformer']
