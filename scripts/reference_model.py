"""DK-CLIP computed the way X-CLIP-style code usually does it: sequence-first tensors, ``nn.MultiheadAttention``
with its attention weights, explicit softmax attention, Python loops over videos and snippets in the head.
Same parameter names as :class:`models.DKCLIP`: the benchmark's CPU yardstick (``scripts/benchmark.py
reference``) and the tests' independent check of the outputs and gradients; never used for training."""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from clip.layers import QuickGELU
from clip.model import CLIPTextTower, clip_dims_from_state_dict
from models.dkclip import DKCLIP
from models.prompt_generator import CrossAttention, VideoSpecificPromptGenerator


class LayerNorm(nn.LayerNorm):
    """OpenAI's fp16-safe LayerNorm recipe: 16-bit input is upcast to fp32, normalised, cast back."""

    def forward(self, x):
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


def make_mlp(width):
    """OpenAI's MLP: ``c_fc`` (W -> 4W), QuickGELU as ``x * sigmoid(1.702 x)``, ``c_proj`` (4W -> W)."""
    return nn.Sequential(OrderedDict([('c_fc', nn.Linear(width, 4 * width)), ('gelu', QuickGELU()),
                                      ('c_proj', nn.Linear(4 * width, width))]))


class SequenceFirstBlock(nn.Module):
    """OpenAI's residual attention block on ``[L, N, W]`` with ``nn.MultiheadAttention``."""

    def __init__(self, width, num_heads, norm_layer=LayerNorm):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, num_heads)
        self.ln_1 = norm_layer(width)
        self.mlp = make_mlp(width)
        self.ln_2 = norm_layer(width)

    def attention(self, x):
        return self.attn(x, x, x, need_weights=True)[0]

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class SequenceFirstCrossFrameBlock(SequenceFirstBlock):
    """The cross-frame block on ``[L, N * G, W]``: message tokens attend across each group of G rows."""

    def __init__(self, width, num_heads, group_size):
        super().__init__(width, num_heads)
        self.group_size = group_size
        self.message_fc = nn.Linear(width, width)
        self.message_ln = LayerNorm(width)
        self.message_attn = nn.MultiheadAttention(width, num_heads)

    def forward(self, x):
        length, rows, width = x.shape
        message = self.message_fc(x[0]).view(rows // self.group_size, self.group_size, width)
        message = message.permute(1, 0, 2)  # [G, N, W]: the group is the sequence
        normed = self.message_ln(message)
        message = message + self.message_attn(normed, normed, normed, need_weights=True)[0]
        message = message.permute(1, 0, 2).reshape(1, rows, width)
        x = torch.cat([x, message], dim=0)  # [L + 1, N * G, W]
        x = x + self.attention(self.ln_1(x))
        x = x[:length]
        return x + self.mlp(self.ln_2(x))


class ReferenceVisionEncoder(nn.Module):
    """``visual`` (``patchify=True``) or ``visual_semantic``: a ViT of cross-frame blocks, sequence-first."""

    def __init__(self, dims, group_size, patchify):
        super().__init__()
        width, scale = dims.vision_width, dims.vision_width ** -0.5
        if patchify:
            self.conv1 = nn.Conv2d(3, width, dims.vision_patch_size, dims.vision_patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(dims.num_patches + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[
            SequenceFirstCrossFrameBlock(width, dims.vision_heads, group_size)
            for _ in range(dims.vision_layers)])
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, dims.embed_dim))

    def encode(self, patch_tokens):
        """Patch tokens [P, N, W] -> all output tokens [1 + P, N, W]."""
        class_token = self.class_embedding.expand(1, patch_tokens.shape[1], -1)
        x = torch.cat([class_token, patch_tokens], dim=0) + self.positional_embedding[:, None]
        return self.transformer.resblocks(self.ln_pre(x))

    def encode_frames(self, frames):
        """Frames [N, 3, H, W] -> (class features [N, E], patch tokens [P, N, W])."""
        patches = self.conv1(frames).flatten(2).permute(2, 0, 1)  # [P, N, W]
        x = self.encode(patches)
        return self.ln_post(x[0]) @ self.proj, x[1:]


class ReferenceMultiSnippetIntegration(nn.Module):
    """``msim``: positional embedding, sequence-first blocks with ``nn.LayerNorm``, residual, mean."""

    def __init__(self, num_snippets, embed_dim, layers):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(1, num_snippets, embed_dim))
        self.resblocks = nn.Sequential(*[SequenceFirstBlock(embed_dim, max(1, embed_dim // 64), nn.LayerNorm)
                                         for _ in range(layers)])

    def forward(self, snippet_features):
        x = (snippet_features + self.positional_embedding).permute(1, 0, 2)  # [S, B, E]
        x = self.resblocks(x).permute(1, 0, 2)
        return (x + snippet_features).mean(dim=1)


class ReferenceCrossAttention(CrossAttention):
    """The prompt generator's cross attention with an explicit softmax over ``q k^T / sqrt(d)``."""

    def forward(self, queries, context):
        batch, num_queries, width = queries.shape
        head_width = width // self.num_heads
        q = self.q_proj(queries).view(batch, num_queries, self.num_heads, head_width)
        k = self.k_proj(context).view(batch, -1, self.num_heads, head_width)
        v = self.v_proj(context).view(batch, -1, self.num_heads, head_width)
        weights = (torch.einsum('bqhd,bkhd->bhqk', q, k) * head_width ** -0.5).softmax(dim=-1)
        return self.proj(torch.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, num_queries, width))


def reference_prompt_generator(embed_dim, layers):
    """``prompts_generator_cmam`` with :class:`ReferenceCrossAttention`; the model calls it one video at
    a time."""
    generator = VideoSpecificPromptGenerator(embed_dim, layers, alpha_init=0.0)
    for layer in generator.decoder:
        layer.cross_attn = ReferenceCrossAttention(embed_dim, layer.cross_attn.num_heads)
    return generator


class ReferenceDKCLIP(CLIPTextTower):
    """The straightforward DK-CLIP (no stochastic depth); arguments as :class:`models.DKCLIP`'s. The text
    tower is CLIP's (tested against open_clip); with ``fix_text`` its features are computed once under
    ``no_grad`` and kept."""

    UNUSED_PARAMETER_PREFIXES = DKCLIP.UNUSED_PARAMETER_PREFIXES

    def __init__(self, dims, *, num_frames, num_snippets, prompt_layers, msim_layers, erase_threshold,
                 use_local, fix_text):
        super().__init__(dims.embed_dim, dims.context_length, dims.vocab_size, dims.transformer_width,
                         dims.transformer_heads, dims.transformer_layers)
        self.num_snippets, self.erase_threshold = num_snippets, erase_threshold
        self.use_local, self.fix_text, self.cached_text = use_local, fix_text, None
        self.visual = ReferenceVisionEncoder(dims, num_frames // num_snippets, patchify=True)
        self.visual_semantic = ReferenceVisionEncoder(dims, num_snippets, patchify=False)
        self.msim = ReferenceMultiSnippetIntegration(num_snippets, dims.embed_dim, msim_layers)
        self.prompts_generator_cmam = reference_prompt_generator(dims.embed_dim, prompt_layers)
        self.prompts_visual_ln = LayerNorm(dims.vision_width)
        self.prompts_visual_proj = nn.Parameter(torch.randn(dims.vision_width, dims.embed_dim))

    def text_features(self, tokens):
        if not self.fix_text:
            return self.encode_text(tokens)
        if self.cached_text is None:
            with torch.no_grad():
                self.cached_text = self.encode_text(tokens)
        return self.cached_text

    def encode_video(self, videos):
        """Videos [B, T, 3, H, W] -> (v [B, E], c [B, S, E], snippet tokens [B, S, P, E])."""
        batch, num_frames = videos.shape[:2]
        snippets, per_snippet = self.num_snippets, num_frames // self.num_snippets
        class_features, patches = self.visual.encode_frames(videos.flatten(0, 1))  # [B*T, E], [P, B*T, W]
        snippet_features = class_features.view(batch, snippets, per_snippet, -1).mean(dim=2)
        pooled = patches.view(patches.shape[0], batch * snippets, per_snippet, -1).mean(dim=2)
        integrated = self.visual_semantic.encode(pooled)[1:].permute(1, 0, 2)  # [B * S, P, W]
        snippet_tokens = self.prompts_visual_ln(integrated) @ self.prompts_visual_proj
        video_features = self.msim(snippet_features)
        return video_features, snippet_features, snippet_tokens.view(batch, snippets, -1,
                                                                     snippet_tokens.shape[-1])

    def classify_one(self, video, snippets, snippet_tokens, text, scale):
        """Relevance, erasing, prompts and logits of one video (docs/model.md), snippet by snippet."""
        video, snippets = F.normalize(video, dim=-1), F.normalize(snippets, dim=-1)
        similarity = torch.stack([scale * (video @ snippet) for snippet in snippets])  # [S]
        low, high = similarity.min(), similarity.max()
        normalised = (similarity - low) / (high - low) if high > low else torch.zeros_like(similarity)
        relevance = normalised.softmax(dim=0)
        erased = [self.use_local and bool(weight < self.erase_threshold) for weight in relevance]
        kept = [tokens for tokens, is_erased in zip(snippet_tokens, erased) if not is_erased]
        context = torch.stack(kept).mean(dim=0) if kept else torch.zeros_like(snippet_tokens[0])
        prompts = F.normalize(text + self.prompts_generator_cmam(text, context[None])[0], dim=-1)  # [K, E]
        logits_global = scale * prompts @ video
        logits_local = torch.stack([scale * (prompts @ snippet) * weight * (0.0 if is_erased else 1.0)
                                    for snippet, weight, is_erased in zip(snippets, relevance, erased)])
        return logits_global, logits_local, video

    def forward(self, videos, text_tokens, return_details=False):
        """Return ``(logits_global [B, K], logits_local [B, S, K] or None, video_features [B, E])``; with
        ``return_details`` the same by name in a dict, as :class:`models.DKCLIP` gives the loss."""
        video_features, snippet_features, snippet_tokens = self.encode_video(videos)
        text, scale = self.text_features(text_tokens), self.logit_scale.exp()
        outputs = [self.classify_one(*inputs, text, scale)
                   for inputs in zip(video_features, snippet_features, snippet_tokens)]
        logits_global, logits_local, video = (torch.stack(parts) for parts in zip(*outputs))
        logits_local = logits_local if self.use_local else None
        if return_details:
            return dict(logits_global=logits_global, logits_local=logits_local, video_features=video)
        return logits_global, logits_local, video


def build_reference_model(model):
    """A :class:`ReferenceDKCLIP` with the weights, settings, mode and ``requires_grad`` flags of the
    :class:`models.DKCLIP` ``model``, on its device.

    Raises:
        ValueError: ``model`` uses stochastic depth, which the reference lacks.
    """
    if any(getattr(module, 'drop_prob', 0.0) > 0 for module in model.modules()):
        raise ValueError('the reference model has no stochastic depth: set MODEL.DROP_PATH_RATE 0')
    settings = dict(num_frames=model.num_frames, num_snippets=model.num_snippets,
                    prompt_layers=len(model.prompts_generator_cmam.decoder),
                    msim_layers=len(model.msim.resblocks), erase_threshold=model.erase_threshold,
                    use_local=model.use_local, fix_text=model.fix_text)
    state_dict = model.state_dict()
    reference = ReferenceDKCLIP(clip_dims_from_state_dict(state_dict), **settings)
    reference.load_state_dict(state_dict, strict=True)
    reference.train(model.training)
    trainable = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    for name, parameter in reference.named_parameters():
        parameter.requires_grad_(trainable[name])
    return reference.to(next(model.parameters()).device)
