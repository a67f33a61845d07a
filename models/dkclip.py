"""DK-CLIP: CLIP with a hierarchical video encoder, AU-knowledge prompts and class-aware consistency.

Paper: "Domain Knowledge Enhanced Vision-Language Pretrained Model for Dynamic Facial Expression
Recognition" (DK-CLIP, ACM MM 2024). Behaviour and parameter names follow the official release, as
restated in ``spec/model.md``; section numbers below refer to it.

Order: relevance and erasing (pure functions), text-feature cache, model.
"""
import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clip.layers import LayerNorm
from clip.model import CLIPTextTower

from .cross_frame import LocalVideoEncoder, SnippetIntegrationEncoder
from .msim import MultiSnippetIntegration
from .prompt_generator import VideoSpecificPromptGenerator


def snippet_relevance(video_features, snippet_features, logit_scale):
    """Relevance weights r [B, S] of the snippets to their video (section 5).

    ``sim_j = s <v, c_j>``, min-max normalised over the snippets (no epsilon), then softmax. When all
    ``sim_j`` of a video are equal (always for S = 1) the normalisation is undefined: r = 1 / S.

    Args:
        video_features: L2-normalised v [B, E].
        snippet_features: L2-normalised c [B, S, E].
        logit_scale: s = exp(logit_scale), a 0-d tensor.
    """
    similarity = logit_scale * torch.einsum('be,bse->bs', video_features, snippet_features)  # [B, S]
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


def fuse_local_logits(snippet_features, prompt_features, logit_scale, relevance, erased):
    """Local logits ``l_jk = s <c_j, t_b,k> r_j (1 - e_j)`` [B, S, K] (section 5).

    Args:
        snippet_features: L2-normalised c [B, S, E].
        prompt_features: L2-normalised per-video prompts t_b [B, K, E].
        logit_scale: s (0-d).
        relevance: r [B, S].
        erased: e [B, S] bool.
    """
    weights = relevance * (~erased).to(relevance.dtype)  # [B, S]
    logits = logit_scale * torch.einsum('bse,bke->bsk', snippet_features, prompt_features)
    return logits * weights[:, :, None]


def _normalized_fp32(features):
    # The relevance step magnifies rounding ~100x (section 5), so the head runs in fp32 at least.
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    return F.normalize(features, dim=-1)


def _has_autocast(device_type):
    # False e.g. on the meta device. torch.compile (dynamo of torch <= 2.11) cannot trace this check, and
    # a graph break here split the compiled head and made it recompile every step on an H200; a compiled
    # model runs on a device with autocast, so the check is skipped while compiling.
    return torch.compiler.is_compiling() or torch.amp.is_autocast_available(device_type)


def _autocast_state(device_type):
    if not _has_autocast(device_type):
        return False, None
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def _autocast_off(device_type):
    if not _has_autocast(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


@dataclass
class _TextCache:
    tokens: torch.Tensor
    key: tuple
    features: torch.Tensor


class DKCLIP(CLIPTextTower):
    """The DK-CLIP model (sections 2-5). Build it with :func:`models.build_model`.

    Parameters (section 2): ``visual`` (local cross-frame encoder), ``visual_semantic`` (snippet
    integration encoder), ``msim``, ``prompts_generator_cmam``, ``prompts_visual_ln``,
    ``prompts_visual_proj`` and CLIP's text encoder under OpenAI's names (from :class:`CLIPTextTower`).

    Args:
        dims: ``clip.CLIPDims`` of the CLIP backbone (``image_resolution`` = the input size).
        num_frames: T, frames per video.
        num_snippets: S, snippets per video (T divisible by S).
        prompt_layers: decoder layers of the prompt generator.
        prompt_alpha: initial ``alpha`` of the prompt generator.
        msim_layers: residual blocks of ``msim``.
        erase_threshold: tau; snippets with relevance below it are erased.
        use_local: compute the local (per-snippet) logits and erase; False: global head only.
        fix_text: the text encoder is frozen; its features are cached under ``no_grad``.
        drop_path_rate: stochastic depth of the last block of both vision encoders.
        use_checkpoint: activation checkpointing over the vision blocks.
        msim_pos_init_std: initial std of msim's positional embedding (0.02 as released).
    """

    # Parameters the forward pass never uses (kept for checkpoint compatibility); the optimizer
    # freezes them so that DDP needs no find_unused_parameters.
    UNUSED_PARAMETER_PREFIXES = ('visual_semantic.ln_post.', 'visual_semantic.proj')

    def __init__(self, dims, *, num_frames, num_snippets, prompt_layers, prompt_alpha, msim_layers,
                 erase_threshold, use_local, fix_text, drop_path_rate, use_checkpoint, msim_pos_init_std=0.02):
        super().__init__(dims.embed_dim, dims.context_length, dims.vocab_size, dims.transformer_width,
                         dims.transformer_heads, dims.transformer_layers)
        if num_frames % num_snippets:
            raise ValueError(f'{num_frames} frames cannot be split into {num_snippets} equal snippets')
        self.num_frames = num_frames
        self.num_snippets = num_snippets
        self.erase_threshold = erase_threshold
        self.use_local = use_local
        self.fix_text = fix_text
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
        self._text_cache = None

    def set_grad_checkpointing(self, enable=True):
        """Turn activation checkpointing over the blocks of both vision encoders on or off."""
        self.visual.transformer.use_checkpoint = enable
        self.visual_semantic.transformer.use_checkpoint = enable

    # ------------------------------------------------------------------------------------------------
    # Encoders
    # ------------------------------------------------------------------------------------------------
    def encode_video(self, videos):
        """Videos [B, T, 3, H, W] (normalised) -> ``(video_features [B, E], snippet_features [B, S, E],
        snippet_tokens [B, S, P, E])``, none of them normalised (sections 3a-3d)."""
        batch, num_frames = videos.shape[:2]
        size = self.visual.input_resolution
        if videos.shape[1:] != (self.num_frames, 3, size, size):
            raise ValueError(f'expected videos [B, {self.num_frames}, 3, {size}, {size}] (DATA.NUM_FRAMES, '
                             f'DATA.INPUT_SIZE), got {list(videos.shape)}')
        snippets, frames_per_snippet = self.num_snippets, num_frames // self.num_snippets
        class_features, patch_tokens = self.visual(videos.flatten(0, 1))  # [B * T, E], [B * T, P, W]
        snippet_features = class_features.view(batch, snippets, frames_per_snippet, -1).mean(dim=2)
        pooled_patches = patch_tokens.unflatten(0, (batch * snippets, frames_per_snippet)).mean(dim=1)
        integrated = self.visual_semantic(pooled_patches)  # [B * S, P, W]
        snippet_tokens = self.prompts_visual_ln(integrated) @ self.prompts_visual_proj  # [B * S, P, E]
        video_features = self.msim(snippet_features)  # [B, E]
        return video_features, snippet_features, snippet_tokens.unflatten(0, (batch, snippets))

    def _text_parameters(self):
        yield from (self.token_embedding.weight, self.positional_embedding, self.ln_final.weight,
                    self.ln_final.bias, self.text_projection)
        yield from self.transformer.parameters()

    def _text_cache_key(self, text_tokens):
        weights = tuple((p.data_ptr(), p._version) for p in self._text_parameters())
        autocast = _autocast_state(text_tokens.device.type)
        # Inference tensors have no version counter: they are compared by value instead.
        tokens_version = None if text_tokens.is_inference() else text_tokens._version
        return tokens_version, weights, autocast

    def _cached_text_features(self, text_tokens, key):
        cache = self._text_cache
        if cache is None or cache.key[1:] != key[1:]:
            return None
        # Features made under inference_mode cannot enter an autograd graph later.
        if cache.features.is_inference() and not torch.is_inference_mode_enabled():
            return None
        if cache.tokens is text_tokens and key[0] is not None and cache.key[0] == key[0]:
            return cache.features
        # Another tensor: compare by value (one host sync, only when the caller re-creates the tokens).
        if cache.tokens.shape == text_tokens.shape and cache.tokens.device == text_tokens.device \
                and torch.equal(cache.tokens, text_tokens):
            self._text_cache = _TextCache(text_tokens, key, cache.features)
            return cache.features
        return None

    def encode_prompts(self, text_tokens):
        """Class-prompt features t [K, E] for text tokens [K, 77] (section 4).

        With ``fix_text`` they are computed once under ``no_grad`` and cached until the tokens, the
        text weights (by version counter and storage) or the autocast state change; the module's
        train/eval mode is never touched. Otherwise they are recomputed, with gradient, every call.
        """
        if not self.fix_text:
            return self.encode_text(text_tokens)
        key = self._text_cache_key(text_tokens)
        features = self._cached_text_features(text_tokens, key)
        if features is None:
            with torch.no_grad():
                features = self.encode_text(text_tokens)
            self._text_cache = _TextCache(text_tokens, key, features)
        return features

    # ------------------------------------------------------------------------------------------------
    # Head and forward
    # ------------------------------------------------------------------------------------------------
    def classify(self, video_features, snippet_features, snippet_tokens, text_features):
        """Relevance, erasing, video-specific prompts and logits (sections 4-5) from encoder outputs.

        Args:
            video_features: v [B, E]; snippet_features: c [B, S, E]; snippet_tokens: [B, S, P, E];
                text_features: t [K, E] (none of them normalised).

        Returns:
            dict: ``logits_global`` [B, K], ``logits_local`` [B, S, K] (None without the local
            branch), ``video_features`` (normalised v [B, E]), ``relevance`` r [B, S], ``erased``
            e [B, S] bool; logits and features in fp32 (or wider).
        """
        logit_scale = self.logit_scale.exp()
        video = _normalized_fp32(video_features)  # [B, E]
        snippets = _normalized_fp32(snippet_features)  # [B, S, E]
        with _autocast_off(video.device.type):
            relevance = snippet_relevance(video, snippets, logit_scale)  # [B, S]
        if self.use_local:
            erased = relevance.detach() < self.erase_threshold
        else:
            erased = torch.zeros_like(relevance, dtype=torch.bool)
        context = mean_over_kept_snippets(snippet_tokens, erased)  # [B, P, E]
        prompts = text_features + self.prompts_generator_cmam(text_features, context)  # [B, K, E]
        prompts = _normalized_fp32(prompts)
        with _autocast_off(video.device.type):
            logits_global = logit_scale * torch.einsum('be,bke->bk', video, prompts)  # [B, K]
            logits_local = (fuse_local_logits(snippets, prompts, logit_scale, relevance, erased)
                            if self.use_local else None)  # [B, S, K]
        return dict(logits_global=logits_global, logits_local=logits_local, video_features=video,
                    relevance=relevance, erased=erased)

    def encode_and_classify(self, videos, text_features):
        """Videos [B, T, 3, H, W] and class-prompt features t [K, E] -> the dict of :meth:`classify`:
        everything between the inputs and the logits, which ``TRAIN.COMPILE`` compiles into one graph
        (``models.compile``)."""
        return self.classify(*self.encode_video(videos), text_features)

    def forward_details(self, videos, text_tokens):
        """Videos [B, T, 3, H, W] and text tokens [K, 77] -> the dict of :meth:`classify` (for the
        visualisation tools; :meth:`forward` returns its first three entries)."""
        return self.encode_and_classify(videos, self.encode_prompts(text_tokens))

    def forward(self, videos, text_tokens):
        """Return ``(logits_global [B, K], logits_local [B, S, K] or None, video_features [B, E])``."""
        details = self.forward_details(videos, text_tokens)
        return details['logits_global'], details['logits_local'], details['video_features']
