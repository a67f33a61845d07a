"""DK-CLIP ("Domain Knowledge Enhanced Vision-Language Pretrained Model for Dynamic Facial Expression
Recognition", ACM MM 2024): CLIP with a hierarchical video encoder, AU-knowledge prompts and class-aware
consistency. Behaviour and parameter names follow the official release (docs/model.md).
"""
import torch
import torch.nn.functional as F
from torch import nn

from clip.layers import LayerNorm
from clip.model import CLIPTextTower
from utils.config import KNOWN_HEAD_PRECISIONS

from .cross_frame import LocalVideoEncoder, SnippetIntegrationEncoder
from .msim import MultiSnippetIntegration
from .prompt_generator import VideoSpecificPromptGenerator


def dot_products(a, b, in_autocast_dtype):
    """``<a, b>`` over the last dimension (broadcast): as a matrix product, which autocast runs in 16 bits
    (the release's head), or as element-wise products summed, which it leaves in fp32 (docs/model.md,
    section 15)."""
    if in_autocast_dtype:
        return (a.unsqueeze(-2) @ b.unsqueeze(-1))[..., 0, 0]
    return (a * b).sum(dim=-1)


def snippet_relevance(video_features, snippet_features, logit_scale, in_autocast_dtype=False):
    """Relevance r [B, S] of the snippets c [B, S, E] to their video v [B, E] (both normalised):
    ``softmax(minmax(s <v, c_j>))``, uniform where all similarities are equal (docs/model.md, section 9)."""
    similarity = logit_scale * dot_products(video_features[:, None], snippet_features,
                                            in_autocast_dtype)  # [B, S]
    low = similarity.amin(dim=1, keepdim=True)
    spread = similarity.amax(dim=1, keepdim=True) - low
    # Where the spread is 0, sim - low is 0 too: a unit denominator gives n = 0 (uniform softmax) and a
    # finite gradient, without a branch that would need the values on the host.
    safe_spread = torch.where(spread > 0, spread, torch.ones_like(spread))
    return ((similarity - low) / safe_spread).softmax(dim=1)


def mean_over_kept_snippets(snippet_tokens, erased):
    """Mean of the snippet tokens [B, S, P, E] over the snippets not erased -> [B, P, E] (zeros when
    all of a video's snippets are erased)."""
    keep = (~erased).to(snippet_tokens.dtype)  # [B, S]
    total = (snippet_tokens * keep[:, :, None, None]).sum(dim=1)  # [B, P, E]
    return total / keep.sum(dim=1).clamp(min=1)[:, None, None]


def fuse_local_logits(snippet_features, prompt_features, logit_scale, relevance, erased,
                      in_autocast_dtype=False):
    """Local logits ``l_jk = s <c_j, t_b,k> r_j (1 - e_j)`` [B, S, K] from normalised snippets c
    [B, S, E] and per-video prompts t_b [B, K, E] (docs/model.md, section 11)."""
    weights = relevance * (~erased).to(relevance.dtype)  # [B, S]
    similarity = dot_products(snippet_features[:, :, None], prompt_features[:, None],
                              in_autocast_dtype)  # [B, S, K]
    return logit_scale * similarity * weights[:, :, None]


def _autocast_is_on(device_type):
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _normalized_fp32(features):
    # fp32 at least (fp64 stays): the head runs in full precision under autocast too
    return F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=-1)


class DKCLIP(CLIPTextTower):
    """The DK-CLIP model; build it with :func:`models.builder.build_model`, which maps the config keys to
    these arguments (``models.builder.model_settings``; docs/model.md, section 2 for the symbols).
    Parameters under the release's names (docs/model.md, section 18): ``visual``, ``visual_semantic``,
    ``msim``, ``prompts_generator_cmam``, ``prompts_visual_ln``, ``prompts_visual_proj`` and CLIP's text
    encoder."""

    # Parameters the forward pass never uses (kept for checkpoint compatibility); the optimizer
    # freezes them so that DDP needs no find_unused_parameters.
    UNUSED_PARAMETER_PREFIXES = ('visual_semantic.ln_post.', 'visual_semantic.proj')

    def __init__(self, dims, *, num_frames, num_snippets, prompt_layers, prompt_alpha, msim_layers,
                 erase_threshold, use_local, fix_text, drop_path_rate, use_checkpoint,
                 msim_pos_init_std=0.02, head_precision='autocast'):
        super().__init__(dims.embed_dim, dims.context_length, dims.vocab_size, dims.transformer_width,
                         dims.transformer_heads, dims.transformer_layers)
        if num_frames % num_snippets:
            raise ValueError(f'{num_frames} frames cannot be split into {num_snippets} equal snippets')
        self.num_frames = num_frames
        self.num_snippets = num_snippets
        self.erase_threshold = erase_threshold
        self.use_local = use_local
        self.fix_text = fix_text
        if head_precision not in KNOWN_HEAD_PRECISIONS:
            raise ValueError(f'head_precision {head_precision!r} is not one of {KNOWN_HEAD_PRECISIONS}')
        self.head_precision = head_precision
        vision = dict(input_resolution=dims.image_resolution, patch_size=dims.vision_patch_size,
                      width=dims.vision_width, layers=dims.vision_layers, heads=dims.vision_heads,
                      output_dim=dims.embed_dim, drop_path_rate=drop_path_rate,
                      use_checkpoint=use_checkpoint)
        self.visual = LocalVideoEncoder(frames_per_snippet=num_frames // num_snippets, **vision)
        self.visual_semantic = SnippetIntegrationEncoder(num_snippets=num_snippets, **vision)
        self.msim = MultiSnippetIntegration(num_snippets, dims.embed_dim, msim_layers, msim_pos_init_std)
        self.prompts_generator_cmam = VideoSpecificPromptGenerator(dims.embed_dim, prompt_layers,
                                                                   prompt_alpha)
        self.prompts_visual_ln = LayerNorm(dims.vision_width)
        self.prompts_visual_proj = nn.Parameter(torch.randn(dims.vision_width, dims.embed_dim))

    def set_grad_checkpointing(self, enable=True):
        """Turn activation checkpointing over the blocks of both vision encoders on or off."""
        self.visual.transformer.use_checkpoint = enable
        self.visual_semantic.transformer.use_checkpoint = enable

    def encode_video(self, videos):
        """Videos [B, T, 3, H, W] -> (v [B, E], c [B, S, E], snippet tokens [B, S, P, E]), not normalised
        (docs/model.md, sections 4-7)."""
        batch, snippets = videos.shape[0], self.num_snippets
        size = self.visual.input_resolution
        if videos.shape[1:] != (self.num_frames, 3, size, size):
            raise ValueError(f'expected videos [B, {self.num_frames}, 3, {size}, {size}] (DATA.NUM_FRAMES, '
                             f'DATA.INPUT_SIZE), got {list(videos.shape)}')
        class_features, patch_tokens = self.visual(videos.flatten(0, 1))  # [B * T, E], [B * T, P, W]
        # each snippet's F frames are consecutive rows: averaged
        snippet_features = class_features.unflatten(0, (batch, snippets, -1)).mean(dim=2)  # [B, S, E]
        pooled_patches = patch_tokens.unflatten(0, (batch * snippets, -1)).mean(dim=1)  # [B * S, P, W]
        integrated = self.visual_semantic(pooled_patches)  # [B * S, P, W]
        snippet_tokens = self.prompts_visual_ln(integrated) @ self.prompts_visual_proj  # [B * S, P, E]
        video_features = self.msim(snippet_features)  # [B, E]
        return video_features, snippet_features, snippet_tokens.unflatten(0, (batch, snippets))

    def encode_prompts(self, text_tokens):
        """Class-prompt features t [K, E] of tokens [K, 77]; under ``no_grad`` when the text tower is
        frozen (docs/model.md, section 8)."""
        if not self.fix_text:
            return self.encode_text(text_tokens)
        with torch.no_grad():
            return self.encode_text(text_tokens)

    def classify(self, video_features, snippet_features, snippet_tokens, text_features):
        """The head (docs/model.md, sections 9-11): relevance, erasing, video-specific prompts, logits.

        Returns:
            dict: ``logits_global`` [B, K], ``logits_local`` [B, S, K] (None without the local head),
            ``video_features`` (normalised v [B, E]), ``relevance`` r [B, S], ``erased`` e [B, S].
        """
        logit_scale = self.logit_scale.exp()
        low_precision = self.head_precision == 'autocast' and _autocast_is_on(video_features.device.type)
        video = _normalized_fp32(video_features)  # [B, E]
        snippets = _normalized_fp32(snippet_features)  # [B, S, E]
        relevance = snippet_relevance(video, snippets, logit_scale, low_precision)  # [B, S]
        if self.use_local:
            erased = relevance.detach() < self.erase_threshold
        else:
            erased = torch.zeros_like(relevance, dtype=torch.bool)
        context = mean_over_kept_snippets(snippet_tokens, erased)  # [B, P, E]
        prompts = text_features + self.prompts_generator_cmam(text_features, context)  # [B, K, E]
        prompts = _normalized_fp32(prompts)
        logits_global = logit_scale * dot_products(video[:, None], prompts, low_precision)  # [B, K]
        logits_local = (fuse_local_logits(snippets, prompts, logit_scale, relevance, erased, low_precision)
                        if self.use_local else None)  # [B, S, K]
        return dict(logits_global=logits_global, logits_local=logits_local, video_features=video,
                    relevance=relevance, erased=erased)

    def forward(self, videos, text_tokens, return_details=False):
        """Videos [B, T, 3, H, W] (normalised) and prompt tokens [K, 77] -> ``(logits_global [B, K],
        logits_local [B, S, K] or None, video_features [B, E])``, or with ``return_details`` the dict of
        :meth:`classify` (what the loss and the visualisation take by name)."""
        # [B, E], [B, S, E], [B, S, P, E]
        video_features, snippet_features, snippet_tokens = self.encode_video(videos)
        text_features = self.encode_prompts(text_tokens)  # [K, E]
        details = self.classify(video_features, snippet_features, snippet_tokens, text_features)
        if return_details:
            return details
        return details['logits_global'], details['logits_local'], details['video_features']
