"""DK-CLIP forward pass on tiny configs: shapes, precision, erasing and local fusion against a naive
per-sample per-snippet reference, the cross-frame grouping, checkpointing and the frozen text encoder."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import clip
from conftest import TINY_DIMS, tiny_clip_state_dict, tiny_config
from models.builder import build_model
from models.cross_frame import CrossFrameBlock
from models.dkclip import snippet_relevance
from models.loss import build_criterion
from models.prompt_generator import VideoSpecificPromptGenerator

PROMPTS = ['happiness with cheek raiser', 'sadness with brow lowerer', 'neutral', 'anger with lid tightener',
           'surprise with jaw drop', 'disgust with nose wrinkler', 'fear with lip stretcher', 'contempt',
           'anxiety', 'helplessness', 'disappointment']


def build(seed=0, **overrides):
    """A tiny DK-CLIP (random CLIP weights) and its config."""
    config = tiny_config(**overrides)
    torch.manual_seed(seed)
    return build_model(config, tiny_clip_state_dict(seed)), config


def tokens(num_classes):
    return clip.tokenize(PROMPTS[:num_classes])


def videos(batch, num_frames, seed=1):
    return torch.randn(batch, num_frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------
# Shapes and precision
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('batch, num_frames, num_snippets, num_classes', [
    (1, 8, 4, 7),    # B = 1
    (2, 8, 1, 3),    # S = 1
    (2, 4, 4, 5),    # S = T
    (3, 6, 2, 11),   # F = 3
])
def test_shapes_and_finite_outputs_fp32_and_bf16(batch, num_frames, num_snippets, num_classes):
    model, _ = build(DATA__NUM_FRAMES=num_frames, DATA__NUM_DIVIDE=num_snippets)
    inputs, text = videos(batch, num_frames), tokens(num_classes)
    details = model(inputs, text, return_details=True)
    logits_global, logits_local, video_features = model(inputs, text)
    assert logits_global.shape == (batch, num_classes)
    assert logits_local.shape == (batch, num_snippets, num_classes)
    assert video_features.shape == (batch, 64)
    assert details['relevance'].shape == details['erased'].shape == (batch, num_snippets)
    assert details['erased'].dtype == torch.bool
    torch.testing.assert_close(video_features.norm(dim=-1), torch.ones(batch))
    torch.testing.assert_close(details['relevance'].sum(dim=1), torch.ones(batch))
    # the plain call returns what the detailed one computes
    torch.testing.assert_close(logits_global, details['logits_global'], rtol=0, atol=0)
    torch.testing.assert_close(logits_local, details['logits_local'], rtol=0, atol=0)
    for output in (logits_global, logits_local, video_features):
        assert output.dtype == torch.float32 and torch.isfinite(output).all()

    with torch.autocast('cpu', dtype=torch.bfloat16):
        low_precision = model(inputs, text)
    assert all(torch.isfinite(output).all() for output in low_precision)
    assert low_precision[0].shape == (batch, num_classes)
    # bf16 keeps ~3 significant digits; the logits (scale ~14) stay close to fp32's
    torch.testing.assert_close(low_precision[0].float(), logits_global, atol=0.5, rtol=0.05)


def test_the_head_runs_in_autocasts_dtype_as_released_or_in_fp32_when_asked():
    release, _ = build(MODEL__HEAD_PRECISION='autocast')
    full, _ = build(MODEL__HEAD_PRECISION='fp32')  # the same weights
    inputs, text = videos(3, 8), tokens(7)
    reference = full(inputs, text, return_details=True)
    # without autocast the switch changes nothing
    for name, value in release(inputs, text, return_details=True).items():
        assert torch.equal(value, reference[name]), name
    with torch.autocast('cpu', dtype=torch.float16):
        released = release(inputs, text, return_details=True)
        kept = full(inputs, text, return_details=True)
    assert released['logits_global'].dtype == torch.float16  # the release's fp16 dot products
    assert kept['logits_global'].dtype == kept['relevance'].dtype == torch.float32
    # the relevance magnifies rounding: in 16 bits it moves much further from fp32's than the fp32 head's
    released_error = (released['relevance'] - reference['relevance']).abs().max()
    kept_error = (kept['relevance'] - reference['relevance']).abs().max()
    assert released_error > 3 * kept_error


def test_bf16_autocast_backward_is_finite():
    model, config = build()
    criterion = build_criterion(config)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits_global, logits_local, _ = model(videos(2, 8), tokens(7))
    loss, _ = criterion(torch.tensor([0, 3]), 0, logits_global=logits_global, logits_local=logits_local)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize('fix_text', [True, False])
def test_forward_and_backward_need_no_tensor_values_on_the_host(fix_text):
    # Meta tensors hold no data: any .item(), bool() or data-dependent shape would raise here, so this
    # shows that a training step never waits for the device.
    model, config = build(MODEL__DROP_PATH_RATE=0.1, MODEL__FIX_TEXT=fix_text)
    model.to('meta')
    text = tokens(7).to('meta')
    for _ in range(2):
        logits_global, logits_local, _ = model(torch.empty(2, 8, 3, 32, 32, device='meta'), text)
        labels = torch.empty(2, dtype=torch.long, device='meta')
        loss, parts = build_criterion(config)(labels, 0, logits_global=logits_global, logits_local=logits_local)
        loss.backward()
    assert logits_local.shape == (2, 4, 7) and model.visual.conv1.weight.grad.device.type == 'meta'


def test_wrong_number_of_frames_is_a_clear_error():
    model, _ = build()
    with pytest.raises(ValueError, match='DATA.NUM_FRAMES'):
        model(videos(1, 4), tokens(3))


# ----------------------------------------------------------------------------------------------------
# Erasing and local fusion against a naive reference (docs/model.md, "Relevance and erasing")
# ----------------------------------------------------------------------------------------------------
def naive_head(model, video_features, snippet_features, snippet_tokens, text_features, tau, use_local):
    """The head one video and one snippet at a time, with Python floats for the relevance."""
    scale = model.logit_scale.exp().item()
    batch, num_snippets = snippet_features.shape[:2]
    logits_global, logits_local, relevances, erased_all = [], [], [], []
    for b in range(batch):
        video = video_features[b] / video_features[b].norm()
        snippets = [snippet_features[b, j] / snippet_features[b, j].norm() for j in range(num_snippets)]
        similarities = [scale * float(video @ snippet) for snippet in snippets]
        low, high = min(similarities), max(similarities)
        normalised = [(s - low) / (high - low) if high > low else 0.0 for s in similarities]
        total = sum(math.exp(n) for n in normalised)
        relevance = [math.exp(n) / total for n in normalised]
        erased = [use_local and r < tau for r in relevance]
        kept = [snippet_tokens[b, j] for j in range(num_snippets) if not erased[j]]
        context = sum(kept) / len(kept) if kept else torch.zeros_like(snippet_tokens[b, 0])
        prompts = text_features + model.prompts_generator_cmam(text_features, context[None])[0]
        prompts = prompts / prompts.norm(dim=-1, keepdim=True)
        logits_global.append([scale * float(video @ prompt) for prompt in prompts])
        logits_local.append([[scale * float(snippet @ prompt) * relevance[j] * (1 - erased[j])
                              for prompt in prompts] for j, snippet in enumerate(snippets)])
        relevances.append(relevance)
        erased_all.append(erased)

    def as_tensor(values):
        return torch.tensor(values, dtype=video_features.dtype)

    return dict(logits_global=as_tensor(logits_global), logits_local=as_tensor(logits_local),
                relevance=as_tensor(relevances), erased=torch.tensor(erased_all))


@pytest.mark.parametrize('num_snippets, tau, erasing', [
    (4, 0.15, 'some'), (8, 0.15, 'some'),
    (8, 0.3, 'all'),  # r <= e / (e + 7) < 0.3 for S = 8: every snippet erased, context zeros
    (4, 0.0, 'none'),
])
def test_head_matches_naive_reference_on_random_inputs(num_snippets, tau, erasing):
    model, _ = build(DATA__NUM_DIVIDE=num_snippets, MODEL__ERASE_THRESHOLD=tau)
    model.prompts_generator_cmam.double()
    generator = torch.Generator().manual_seed(num_snippets)
    batch, num_patches, width, num_classes = 6, 5, 64, 7
    video = torch.randn(batch, width, generator=generator, dtype=torch.float64)
    # snippets near the video with different spreads, so that some are erased and some not
    snippets = video[:, None] + 0.6 * torch.randn(batch, num_snippets, width, generator=generator,
                                                  dtype=torch.float64)
    snippet_tokens = torch.randn(batch, num_snippets, num_patches, width, generator=generator,
                                 dtype=torch.float64)
    text = torch.randn(num_classes, width, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        expected = naive_head(model, video, snippets, snippet_tokens, text, tau, use_local=True)
        actual = model.classify(video, snippets, snippet_tokens, text)
    for key in ('logits_global', 'logits_local', 'relevance'):
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-9, atol=1e-9)
    assert torch.equal(actual['erased'], expected['erased'])
    erased = expected['erased']
    assert {'some': erased.any() and not erased.all(), 'all': erased.all(), 'none': not erased.any()}[erasing]


def test_full_forward_matches_naive_reference_fp32():
    model, _ = build()
    inputs, text = videos(3, 8), tokens(7)
    with torch.no_grad():
        encoded = model.encode_video(inputs)
        text_features = model.encode_prompts(text)
        expected = naive_head(model, *encoded, text_features, tau=0.15, use_local=True)
        logits_global, logits_local, _ = model(inputs, text)
    # the relevance step magnifies rounding; local logits agree to ~1e-4 relative
    torch.testing.assert_close(logits_global, expected['logits_global'], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_local, expected['logits_local'], rtol=1e-4, atol=1e-4)


def test_outlier_snippet_is_erased_and_the_others_kept():
    model, _ = build()
    video = torch.zeros(1, 64)
    video[0, 0] = 1.0
    snippets = video.repeat(4, 1)[None].clone()  # [1, 4, 64], all aligned with the video
    snippets[0, 2] = torch.zeros(64)
    snippets[0, 2, 1] = 1.0  # snippet 2 is orthogonal to the video: the outlier
    snippet_tokens = torch.randn(1, 4, 5, 64)
    details = model.classify(video, snippets, snippet_tokens, torch.randn(7, 64))
    # n = (1, 1, 0, 1): r = e / (3e + 1) = 0.297 for the aligned, 1 / (3e + 1) = 0.109 for the outlier
    torch.testing.assert_close(details['relevance'][0, 2], torch.tensor(1 / (3 * math.e + 1)))
    assert details['erased'].tolist() == [[False, False, True, False]]
    assert (details['logits_local'][0, 2] == 0).all() and (details['logits_local'][0, [0, 1, 3]] != 0).all()


def test_equal_similarities_and_single_snippet_give_uniform_relevance_without_nan():
    video = F.normalize(torch.randn(2, 64), dim=-1).requires_grad_()
    snippets = video.detach()[:, None].repeat(1, 3, 1).requires_grad_()  # all equal similarities
    relevance = snippet_relevance(video, snippets, torch.tensor(100.0))
    torch.testing.assert_close(relevance, torch.full((2, 3), 1 / 3))
    (relevance * torch.randn(2, 3)).sum().backward()
    assert torch.isfinite(video.grad).all() and torch.isfinite(snippets.grad).all()

    model, config = build(DATA__NUM_DIVIDE=1)
    details = model(videos(2, 8), tokens(3), return_details=True)
    assert (details['relevance'] == 1).all() and not details['erased'].any()
    loss, _ = build_criterion(config)(torch.tensor([0, 1]), 0, **details)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_without_local_branch_nothing_is_erased_and_context_is_the_plain_mean():
    model, _ = build(MODEL__USE_LOCAL=False, MODEL__ERASE_THRESHOLD=0.3)
    inputs, text = videos(3, 8), tokens(7)
    logits_global, logits_local, _ = model(inputs, text)
    assert logits_local is None
    details = model(inputs, text, return_details=True)
    assert not details['erased'].any()
    with torch.no_grad():
        expected = naive_head(model, *model.encode_video(inputs), model.encode_prompts(text), tau=0.3,
                              use_local=False)
    torch.testing.assert_close(logits_global, expected['logits_global'], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Building blocks against naive references
# ----------------------------------------------------------------------------------------------------
def naive_cross_frame_block(block, tokens_, group_size):
    """The cross-frame block one group at a time, each frame's sequence separately."""
    outputs = []
    for start in range(0, tokens_.shape[0], group_size):
        group = tokens_[start:start + group_size]  # [G, L, W]
        message = block.message_fc(group[:, 0])[None]  # [1, G, W]
        message = (message + block.message_attn(block.message_ln(message)))[0]
        for frame, frame_message in zip(group, message):
            sequence = torch.cat([frame, frame_message[None]])[None]  # [1, L + 1, W]
            sequence = sequence + block.attn(block.ln_1(sequence))
            sequence = sequence[:, :-1]
            outputs.append((sequence + block.mlp(block.ln_2(sequence)))[0])
    return torch.stack(outputs)


@pytest.mark.parametrize('group_size', [1, 3, 4])
def test_cross_frame_block_matches_per_group_reference(group_size):
    torch.manual_seed(0)
    block = CrossFrameBlock(64, 1, group_size=group_size)
    tokens_ = torch.randn(2 * group_size * 2, 6, 64)  # 4 groups
    with torch.no_grad():
        torch.testing.assert_close(block(tokens_), naive_cross_frame_block(block, tokens_, group_size),
                                   rtol=1e-5, atol=1e-5)


def test_message_tokens_mix_only_within_a_snippet_and_a_video():
    model, _ = build()  # T 8, S 4: F = 2
    inputs = videos(2, 8)
    changed = inputs.clone()
    changed[0, 2] += torch.randn(3, 32, 32)  # frame 2 of video 0 = snippet 1
    with torch.no_grad():
        before, _ = model.visual(inputs.flatten(0, 1))
        after, _ = model.visual(changed.flatten(0, 1))
        differs = (before - after).abs().amax(dim=1) > 1e-6  # per frame
        assert differs.tolist() == [False, False, True, True] + [False] * 12
        # visual_semantic: the S snippets of one video interact, other videos do not
        pooled = torch.randn(2 * 4, 16, 64)
        moved = pooled.clone()
        moved[1] += torch.randn(16, 64)  # snippet 1 of video 0 (a constant would vanish in ln_pre)
        differs = (model.visual_semantic(pooled) - model.visual_semantic(moved)).abs().amax(dim=(1, 2))
        assert (differs > 1e-6).tolist() == [True] * 4 + [False] * 4


def test_prompt_generator_matches_explicit_attention():
    torch.manual_seed(0)
    generator = VideoSpecificPromptGenerator(embed_dim=128, layers=2, alpha_init=0.1)  # 2 heads
    text, context = torch.randn(5, 128), torch.randn(3, 7, 128)

    def explicit_cross_attention(attention, queries, keys):
        heads = []
        for h in range(2):
            part = slice(64 * h, 64 * (h + 1))
            q = attention.q_proj(queries)[..., part]
            k, v = attention.k_proj(keys)[..., part], attention.v_proj(keys)[..., part]
            weights = (q @ k.transpose(-1, -2) / 8.0).softmax(dim=-1)  # 1 / sqrt(64)
            heads.append(weights @ v)
        return attention.proj(torch.cat(heads, dim=-1))

    with torch.no_grad():
        normed = generator.norm(context)
        expected = text.expand(3, -1, -1)
        for layer in generator.decoder:
            expected = expected + explicit_cross_attention(layer.cross_attn, layer.norm1(expected), normed)
            expected = expected + layer.mlp(layer.norm3(expected))
        torch.testing.assert_close(generator(text, context), 0.1 * expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Checkpointing and stochastic depth
# ----------------------------------------------------------------------------------------------------
def test_activation_checkpointing_gives_the_same_outputs_and_gradients():
    model, config = build(MODEL__DROP_PATH_RATE=0.2, MODEL__FIX_TEXT=False)
    criterion = build_criterion(config)
    calls = []
    block = model.visual.transformer.resblocks[0]
    block_forward = block.forward

    def counting_forward(x):  # a forward hook would not see checkpointing's recomputation
        calls.append(1)
        return block_forward(x)

    block.forward = counting_forward

    def run():
        model.zero_grad()
        calls.clear()
        torch.manual_seed(123)  # the same stochastic-depth draws in both runs
        logits_global, logits_local, _ = model(videos(2, 8), tokens(7))
        criterion(torch.tensor([1, 4]), 0, logits_global=logits_global, logits_local=logits_local)[0].backward()
        return [logits_global.detach(), logits_local.detach()], \
            {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain_outputs, plain_grads = run()
    assert len(calls) == 1
    model.set_grad_checkpointing(True)
    checkpointed_outputs, checkpointed_grads = run()
    assert len(calls) == 2  # the block ran again in backward: checkpointing is active
    for plain, checkpointed in zip(plain_outputs, checkpointed_outputs):
        torch.testing.assert_close(checkpointed, plain, rtol=0, atol=0)
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_use_checkpoint_config_key_turns_checkpointing_on():
    model, _ = build(TRAIN__USE_CHECKPOINT=True)
    assert model.visual.transformer.use_checkpoint and model.visual_semantic.transformer.use_checkpoint


def test_drop_path_rates_ramp_linearly_in_both_encoders():
    four_layers = tiny_clip_state_dict(dims=dataclasses.replace(TINY_DIMS, vision_layers=4))
    model = build_model(tiny_config(MODEL__DROP_PATH_RATE=0.3), four_layers)
    for encoder in (model.visual, model.visual_semantic):
        rates = [getattr(block.drop_path, 'drop_prob', 0.0) for block in encoder.transformer.resblocks]
        assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


# ----------------------------------------------------------------------------------------------------
# Text features: without gradient when frozen, with gradient otherwise
# ----------------------------------------------------------------------------------------------------
def count_text_encoder_runs(model):
    runs = []
    model.transformer.register_forward_hook(lambda *args: runs.append(torch.is_grad_enabled()))
    return runs


def text_parameter_names(model):
    """The text tower's parameters (CLIP's names outside the vision and DK-CLIP modules)."""
    names = [name for name, _ in model.named_parameters()
             if not name.startswith(('visual', 'msim', 'prompts', 'logit_scale'))]
    assert {name.split('.')[0] for name in names} == {'transformer', 'token_embedding', 'positional_embedding',
                                                      'ln_final', 'text_projection'}
    return names


@pytest.mark.parametrize('amp_dtype', [None, torch.bfloat16])
def test_frozen_text_gets_no_gradient_and_gives_the_logits_of_encode_text(amp_dtype):
    model, config = build()
    runs = count_text_encoder_runs(model)
    inputs, text, labels = videos(2, 8), tokens(7), torch.tensor([0, 1])
    with torch.autocast('cpu', dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        logits_global, logits_local, _ = model(inputs, text)
        build_criterion(config)(labels, 0, logits_global=logits_global, logits_local=logits_local)[0].backward()
        with torch.no_grad():
            expected = model.classify(*model.encode_video(inputs), model.encode_text(text))
    assert runs[0] is False  # the frozen tower ran without autograd
    # every parameter still has requires_grad (nothing frozen by an optimizer), yet the text tower got no
    # gradient while the video encoder did
    parameters = dict(model.named_parameters())
    assert all(parameters[name].grad is None for name in text_parameter_names(model))
    assert model.visual.conv1.weight.grad is not None
    torch.testing.assert_close(logits_global, expected['logits_global'])
    torch.testing.assert_close(logits_local, expected['logits_local'])


def test_frozen_text_follows_new_prompts_and_changed_weights():
    model, _ = build()
    inputs = videos(2, 8)
    with torch.no_grad():
        assert model(inputs, tokens(7))[0].shape == (2, 7)
        assert model(inputs, tokens(5))[0].shape == (2, 5)  # other prompts, other classes
        before = model(inputs, tokens(7))[0]
        model.text_projection.mul_(-1.0)  # weights changed in place (optimizer step, load_state_dict)
        after = model(inputs, tokens(7))[0]
    assert not torch.allclose(before, after)


def test_trainable_text_is_recomputed_with_gradient():
    model, _ = build(MODEL__FIX_TEXT=False)
    runs = count_text_encoder_runs(model)
    text = tokens(7)
    for _ in range(2):
        model(videos(2, 8), text)[0].sum().backward()
    assert runs == [True, True]
    assert model.text_projection.grad is not None and model.token_embedding.weight.grad.abs().sum() > 0


def test_msim_positional_init_follows_the_config():
    torch.manual_seed(0)
    released = build_model(tiny_config(), tiny_clip_state_dict())
    assert released.msim.positional_embedding.std().item() == pytest.approx(0.02, rel=0.5)
    torch.manual_seed(0)
    widened = build_model(tiny_config(MODEL__MSIM_POS_INIT_STD=1.0), tiny_clip_state_dict())
    positions = widened.msim.positional_embedding
    assert 0.6 < positions.std().item() < 1.0 and positions.abs().max().item() <= 2.0  # truncated at 2 std
