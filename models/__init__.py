"""DK-CLIP: the video model, its objective and how it is built from the config."""
from .builder import build_model, load_clip_state_dict, load_clip_weights, random_clip_state_dict
from .compile import compile_encoders
from .dkclip import DKCLIP, fuse_local_logits, mean_over_kept_snippets, snippet_relevance
from .loss import DKCLIPLoss, build_criterion

__all__ = ['DKCLIP', 'DKCLIPLoss', 'build_criterion', 'build_model', 'compile_encoders',
           'fuse_local_logits', 'load_clip_state_dict', 'load_clip_weights', 'mean_over_kept_snippets',
           'random_clip_state_dict', 'snippet_relevance']
