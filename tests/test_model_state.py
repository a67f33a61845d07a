"""DK-CLIP's state dict and initialisation (docs/model.md, "Parameter names", "Initialisation") and its
construction from the config (CLIP weights from a file, the cache folder or random; input size)."""
import pytest
import torch

from conftest import tiny_clip_state_dict, tiny_config
from models.builder import build_model, load_clip_state_dict
from utils.config import ConfigError

W = E = 64       # tiny vision width and embedding width (text width is 64 too)
P = 16           # (32 / 8) ** 2 patch tokens
S = 4            # snippets (tiny config: T 8, S 4)
VOCAB, CONTEXT = 49408, 77


def residual_block(prefix, width):
    return {
        f'{prefix}.attn.in_proj_weight': (3 * width, width), f'{prefix}.attn.in_proj_bias': (3 * width,),
        f'{prefix}.attn.out_proj.weight': (width, width), f'{prefix}.attn.out_proj.bias': (width,),
        f'{prefix}.ln_1.weight': (width,), f'{prefix}.ln_1.bias': (width,),
        f'{prefix}.mlp.c_fc.weight': (4 * width, width), f'{prefix}.mlp.c_fc.bias': (4 * width,),
        f'{prefix}.mlp.c_proj.weight': (width, 4 * width), f'{prefix}.mlp.c_proj.bias': (width,),
        f'{prefix}.ln_2.weight': (width,), f'{prefix}.ln_2.bias': (width,),
    }


def cross_frame_block(prefix):
    return {
        **residual_block(prefix, W),
        f'{prefix}.message_fc.weight': (W, W), f'{prefix}.message_fc.bias': (W,),
        f'{prefix}.message_ln.weight': (W,), f'{prefix}.message_ln.bias': (W,),
        f'{prefix}.message_attn.in_proj_weight': (3 * W, W), f'{prefix}.message_attn.in_proj_bias': (3 * W,),
        f'{prefix}.message_attn.out_proj.weight': (W, W), f'{prefix}.message_attn.out_proj.bias': (W,),
    }


def prompt_generator_layer(prefix):
    return {
        f'{prefix}.norm1.weight': (E,), f'{prefix}.norm1.bias': (E,),
        f'{prefix}.cross_attn.q_proj.weight': (E, E), f'{prefix}.cross_attn.k_proj.weight': (E, E),
        f'{prefix}.cross_attn.v_proj.weight': (E, E),
        f'{prefix}.cross_attn.proj.weight': (E, E), f'{prefix}.cross_attn.proj.bias': (E,),
        f'{prefix}.norm3.weight': (E,), f'{prefix}.norm3.bias': (E,),
        f'{prefix}.mlp.0.weight': (4 * E, E), f'{prefix}.mlp.0.bias': (4 * E,),
        f'{prefix}.mlp.3.weight': (E, 4 * E), f'{prefix}.mlp.3.bias': (E,),
    }


def expected_state_dict_shapes():
    """docs/model.md, "Parameter names", for the tiny config: 2 vision, 2 text, 2 prompt, 1 msim layers."""
    shapes = {
        # visual: OpenAI's names plus message modules in every block
        'visual.class_embedding': (W,), 'visual.positional_embedding': (P + 1, W),
        'visual.proj': (W, E), 'visual.conv1.weight': (W, 3, 8, 8),
        'visual.ln_pre.weight': (W,), 'visual.ln_pre.bias': (W,),
        'visual.ln_post.weight': (W,), 'visual.ln_post.bias': (W,),
        # visual_semantic: no conv1
        'visual_semantic.class_embedding': (W,), 'visual_semantic.positional_embedding': (P + 1, W),
        'visual_semantic.proj': (W, E),
        'visual_semantic.ln_pre.weight': (W,), 'visual_semantic.ln_pre.bias': (W,),
        'visual_semantic.ln_post.weight': (W,), 'visual_semantic.ln_post.bias': (W,),
        # msim
        'msim.positional_embedding': (1, S, E), **residual_block('msim.resblocks.0', E),
        # prompt generator
        'prompts_generator_cmam.norm.weight': (E,), 'prompts_generator_cmam.norm.bias': (E,),
        'prompts_generator_cmam.alpha': (E,),
        'prompts_visual_ln.weight': (W,), 'prompts_visual_ln.bias': (W,), 'prompts_visual_proj': (W, E),
        # CLIP's text encoder
        'token_embedding.weight': (VOCAB, 64), 'positional_embedding': (CONTEXT, 64),
        'ln_final.weight': (64,), 'ln_final.bias': (64,), 'text_projection': (64, E), 'logit_scale': (),
    }
    for i in range(2):
        shapes.update(cross_frame_block(f'visual.transformer.resblocks.{i}'))
        shapes.update(cross_frame_block(f'visual_semantic.transformer.resblocks.{i}'))
        shapes.update(prompt_generator_layer(f'prompts_generator_cmam.decoder.{i}'))
        shapes.update(residual_block(f'transformer.resblocks.{i}', 64))
    return shapes


def build(**overrides):
    torch.manual_seed(0)
    return build_model(tiny_config(**overrides), tiny_clip_state_dict())


def test_state_dict_names_and_shapes_follow_the_spec():
    state_dict = build().state_dict()
    expected = expected_state_dict_shapes()
    assert sorted(state_dict) == sorted(expected)
    assert {name: tuple(tensor.shape) for name, tensor in state_dict.items()} == expected


def test_a_checkpoint_loads_strictly_into_a_fresh_model_and_gives_the_same_outputs():
    trained = build()
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    restored = build_model(tiny_config(), tiny_clip_state_dict(seed=5))
    restored.load_state_dict(trained.state_dict(), strict=True)
    inputs, text = torch.randn(2, 8, 3, 32, 32), torch.randint(1, 49000, (3, 77))
    text[:, 10] = 49407
    with torch.no_grad():
        for expected, actual in zip(trained(inputs, text), restored(inputs, text)):
            torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_clip_weights_are_copied_and_the_new_parts_initialised_per_spec():
    clip_weights = tiny_clip_state_dict()
    torch.manual_seed(0)
    model = build_model(tiny_config(), clip_weights)
    state = model.state_dict()
    for name, tensor in clip_weights.items():  # visual.* and the text encoder come from CLIP
        torch.testing.assert_close(state[name], tensor.float(), rtol=0, atol=0, msg=name)
    # visual_semantic is not CLIP's (random blocks with PyTorch defaults, as released)
    assert not torch.equal(state['visual_semantic.transformer.resblocks.0.mlp.c_fc.weight'],
                           clip_weights['visual.transformer.resblocks.0.mlp.c_fc.weight'])
    kaiming_std = (1 / W) ** 0.5 / 3 ** 0.5  # nn.Linear's default: uniform(+-1/sqrt(fan_in))
    assert state['visual_semantic.transformer.resblocks.0.mlp.c_fc.weight'].std() == \
        pytest.approx(kaiming_std, rel=0.1)
    message_fc = state['visual.transformer.resblocks.1.message_fc.weight']
    assert message_fc.std() == pytest.approx(kaiming_std, rel=0.1)
    assert state['visual_semantic.class_embedding'].std() == pytest.approx(W ** -0.5, rel=0.35)
    assert state['visual_semantic.proj'].std() == pytest.approx(W ** -0.5, rel=0.1)
    assert state['prompts_visual_proj'].std() == pytest.approx(1.0, rel=0.1)  # unscaled randn
    for name in ('prompts_visual_ln.weight', 'visual_semantic.ln_pre.weight', 'msim.resblocks.0.ln_1.weight',
                 'prompts_generator_cmam.decoder.0.norm3.weight'):
        assert (state[name] == 1).all(), name
    # msim: truncated normal 0.02 for the positional embedding and Linear weights, Xavier in_proj
    for name in ('msim.resblocks.0.attn.out_proj.weight', 'msim.resblocks.0.mlp.c_fc.weight',
                 'prompts_generator_cmam.decoder.1.cross_attn.q_proj.weight',
                 'prompts_generator_cmam.decoder.0.mlp.3.weight'):
        assert state[name].std() == pytest.approx(0.02, rel=0.1), name
        assert state[name].abs().max() <= 2.0  # truncated at +-2 (absolute), like timm's trunc_normal_
    assert state['msim.positional_embedding'].std() == pytest.approx(0.02, rel=0.25)
    xavier_std = (6 / (W + 3 * W)) ** 0.5 / 3 ** 0.5
    assert state['msim.resblocks.0.attn.in_proj_weight'].std() == pytest.approx(xavier_std, rel=0.1)
    for name in ('msim.resblocks.0.attn.in_proj_bias', 'msim.resblocks.0.mlp.c_proj.bias',
                 'prompts_generator_cmam.decoder.0.cross_attn.proj.bias'):
        assert (state[name] == 0).all(), name
    assert (state['prompts_generator_cmam.alpha'] == 0.1).all()
    assert all(tensor.dtype == torch.float32 for tensor in state.values())


def test_config_keys_reach_the_model():
    model = build(MODEL__PROMPT_LAYERS=3, MODEL__MSIM_LAYERS=2, MODEL__PROMPT_ALPHA=0.5,
                  DATA__NUM_FRAMES=6, DATA__NUM_DIVIDE=3)
    assert len(model.prompts_generator_cmam.decoder) == 3 and len(model.msim.resblocks) == 2
    assert (model.prompts_generator_cmam.alpha == 0.5).all()
    assert model.msim.positional_embedding.shape == (1, 3, E)
    assert model.visual.transformer.resblocks[0].group_size == 2
    assert model.visual_semantic.transformer.resblocks[0].group_size == 3


def test_input_size_other_than_clip_resamples_the_positional_embedding():
    clip_weights = tiny_clip_state_dict()
    model = build_model(tiny_config(DATA__INPUT_SIZE=48), clip_weights)
    embedding = model.visual.positional_embedding
    assert embedding.shape == (37, W) and model.visual_semantic.positional_embedding.shape == (37, W)
    torch.testing.assert_close(embedding[0], clip_weights['visual.positional_embedding'][0])  # class
    outputs = model(torch.randn(1, 8, 3, 48, 48), torch.randint(1, 400, (2, 77)))
    assert outputs[1].shape == (1, S, 2)
    with pytest.raises(ConfigError, match='DATA.INPUT_SIZE'):
        build_model(tiny_config(DATA__INPUT_SIZE=36), clip_weights)


def test_weights_that_do_not_fit_are_a_clear_error():
    clip_weights = tiny_clip_state_dict()
    clip_weights['visual.extra'] = torch.zeros(1)
    with pytest.raises(ValueError, match='visual.extra'):
        build_model(tiny_config(), clip_weights)


# ----------------------------------------------------------------------------------------------------
# Where the CLIP weights come from
# ----------------------------------------------------------------------------------------------------
def test_pretrained_file_is_loaded(tmp_path):
    path = tmp_path / 'weights.pt'
    torch.save({'state_dict': tiny_clip_state_dict(seed=3), 'input_resolution': 32}, path)
    state_dict = load_clip_state_dict(tiny_config(MODEL__PRETRAINED=str(path)))
    expected = tiny_clip_state_dict(seed=3)
    assert state_dict.keys() == expected.keys()
    assert all(torch.equal(state_dict[k], expected[k]) for k in expected)


def test_unreadable_pretrained_file_names_the_key(tmp_path):
    path = tmp_path / 'broken.pt'
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(ConfigError, match='MODEL.PRETRAINED.*broken.pt'):
        load_clip_state_dict(tiny_config(MODEL__PRETRAINED=str(path)))


def test_random_init_uses_the_custom_dimensions():
    state_dict = load_clip_state_dict(tiny_config(MODEL__CUSTOM__VISION_LAYERS=3,
                                                         MODEL__CUSTOM__EMBED_DIM=32))
    assert state_dict['text_projection'].shape == (64, 32)
    assert 'visual.transformer.resblocks.2.attn.in_proj_weight' in state_dict
    assert 'visual.transformer.resblocks.3.attn.in_proj_weight' not in state_dict
    with pytest.raises(ConfigError, match='MODEL.ARCH'):
        load_clip_state_dict(tiny_config(MODEL__ARCH='ViT-X/99'))


def test_named_arch_is_read_from_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv('CLIP_CACHE', str(tmp_path))
    config = tiny_config(MODEL__ARCH='ViT-B/16', MODEL__RANDOM_INIT=False)
    with pytest.raises(ConfigError) as error:
        load_clip_state_dict(config)
    message = str(error.value)
    assert 'ViT-B-16.pt' in message and str(tmp_path) in message and 'MODEL.PRETRAINED' in message
    torch.save(tiny_clip_state_dict(seed=4), tmp_path / 'ViT-B-16.pt')
    state_dict = load_clip_state_dict(config)
    assert torch.equal(state_dict['text_projection'], tiny_clip_state_dict(seed=4)['text_projection'])


def test_custom_arch_without_weights_or_random_init_is_a_clear_error():
    with pytest.raises(ConfigError, match='MODEL.RANDOM_INIT'):
        load_clip_state_dict(tiny_config(MODEL__RANDOM_INIT=False))
