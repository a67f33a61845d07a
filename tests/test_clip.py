"""The project's CLIP against open_clip (independent implementation) and OpenAI's file formats."""
import warnings

import open_clip
import pytest
import torch

import clip
from clip.model import CLIPDims

DATA_MD_PROMPTS = [
    'happiness with cheek raiser and lip corner puller or part',
    'sadness with inner brow raiser or brow lowerer and lip corner depressor and chin raiser',
    'neutral',
    'anger with brow lowerer and lid tightener and chin raiser and lip pressor',
    'surprise with brow raiser and upper lid raiser and lip part and jaw drop',
    'disgust with nose wrinkler and upper lip raiser and chin raiser',
    'fear with brow raiser or brow lowerer and upper lid raiser and lip stretcher or part',
    'contempt', 'anxiety', 'helplessness', 'disappointment',
    'happy with cheek raiser and lip corner puller',
    'sad with inner brow raiser and lip corner depressor',
    'anger with lip tightener and pressor',
    'surprise with inner outer brow raiser and jaw drop',
    'disgust with nose wrinkled and upper lip raiser',
    'fear with inner outer brow raiser and brow lower',
    'happiness', 'sadness', 'anger', 'surprise', 'disgust', 'fear',
]
AWKWARD_TEXT = [
    'Ünïcödé façade — naïve café ☕ 表情 😀',
    'Tom &amp; Jerry &lt;3 &quot;quoted&quot; &#39;x&#39;',
    '   leading and    repeated   spaces\tand\ttabs\n',
    'UPPER case, punctuation!!! ... ???',
    '',
]


def open_clip_model(embed_dim, image_size, vision_layers, vision_width, patch_size, text_width,
                    text_layers, seed=0):
    """An open_clip CLIP with OpenAI's architecture (QuickGELU), randomly initialised."""
    torch.manual_seed(seed)
    vision = open_clip.model.CLIPVisionCfg(layers=vision_layers, width=vision_width,
                                           patch_size=patch_size, image_size=image_size)
    text = open_clip.model.CLIPTextCfg(width=text_width, heads=text_width // 64, layers=text_layers)
    model = open_clip.model.CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    # Randomise the LayerNorms and biases too, so that a wrongly wired parameter cannot hide.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.ndim == 1 and 'class_embedding' not in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


@pytest.mark.parametrize('dims', [
    dict(embed_dim=64, image_size=32, vision_layers=2, vision_width=64, patch_size=8, text_width=64,
         text_layers=2),
    dict(embed_dim=128, image_size=48, vision_layers=3, vision_width=128, patch_size=16, text_width=128,
         text_layers=2),
], ids=['tiny', 'small'])
def test_encoders_match_open_clip(dims):
    reference = open_clip_model(**dims)
    model = clip.build_model(reference.state_dict())
    images = torch.randn(3, 3, dims['image_size'], dims['image_size'])
    tokens = clip.tokenize(DATA_MD_PROMPTS[:5])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference.encode_image(images),
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(model.encode_text(tokens), reference.encode_text(tokens),
                                   rtol=0, atol=1e-5)
        logits_per_image, logits_per_text = model(images, tokens)
    assert logits_per_image.shape == (3, 5) and torch.equal(logits_per_text, logits_per_image.t())


def test_vit_b16_visual_tower_matches_open_clip():
    reference = open_clip_model(embed_dim=512, image_size=224, vision_layers=12, vision_width=768,
                                patch_size=16, text_width=64, text_layers=1)
    model = clip.build_model(reference.state_dict())
    assert clip.clip_dims_from_state_dict(reference.state_dict()) == CLIPDims(
        512, 224, 12, 768, 16, transformer_width=64, transformer_layers=1)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), reference.encode_image(images),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize('text', DATA_MD_PROMPTS + AWKWARD_TEXT)
def test_tokenize_matches_open_clip(text):
    assert torch.equal(clip.tokenize(text), open_clip.tokenize([text]))


def test_tokenize_batch_and_special_tokens():
    tokens = clip.tokenize(DATA_MD_PROMPTS)
    assert tokens.shape == (len(DATA_MD_PROMPTS), 77) and tokens.dtype == torch.long
    assert torch.equal(tokens, open_clip.tokenize(DATA_MD_PROMPTS))
    assert (tokens[:, 0] == 49406).all()
    assert (tokens.argmax(dim=1) == (tokens != 0).sum(dim=1) - 1).all()  # end token last


def test_long_text_raises_or_truncates_like_open_clip():
    long_text = ' '.join(['brow raiser and lip corner puller'] * 30)
    with pytest.raises(ValueError, match='context length 77'):
        clip.tokenize(long_text)
    truncated = clip.tokenize(long_text, truncate=True)
    assert torch.equal(truncated, open_clip.tokenize([long_text]))
    assert truncated[0, -1] == 49407


def _save_jit_archive(model, path):
    images = torch.randn(1, 3, 32, 32, dtype=next(model.parameters()).dtype)
    with warnings.catch_warnings():  # tracing is deprecated (newer torch warns), but OpenAI's files are traced
        warnings.simplefilter('ignore', FutureWarning)
        traced = torch.jit.trace(model, (images, clip.tokenize(['a'])), check_trace=False)
    traced.save(str(path))


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')
def test_load_from_jit_archive_and_state_dict(tmp_path):
    reference = open_clip_model(embed_dim=64, image_size=32, vision_layers=2, vision_width=64,
                                patch_size=8, text_width=64, text_layers=2)
    half = open_clip_model(embed_dim=64, image_size=32, vision_layers=2, vision_width=64, patch_size=8,
                           text_width=64, text_layers=2).half()  # OpenAI's archives hold fp16 weights
    _save_jit_archive(half, tmp_path / 'ViT-tiny.pt')
    state_dict = dict(reference.state_dict(), input_resolution=torch.tensor(32),
                      context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(state_dict, tmp_path / 'plain.pt')

    from_jit, preprocess = clip.load(str(tmp_path / 'ViT-tiny.pt'))
    from_file, _ = clip.load(str(tmp_path / 'plain.pt'))
    for name, parameter in half.state_dict().items():
        if name != 'attn_mask':
            assert torch.equal(from_jit.state_dict()[name], parameter.float()), name
    for name, parameter in reference.state_dict().items():
        assert torch.equal(from_file.state_dict()[name], parameter), name
    assert from_jit.dtype == torch.float32 and not from_jit.training

    from PIL import Image
    image = preprocess(Image.new('RGB', (50, 40), color=(200, 10, 10)))
    assert image.shape == (3, 32, 32)


def test_known_name_missing_says_what_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv('CLIP_CACHE', str(tmp_path))
    assert 'ViT-B/16' in clip.available_models()
    with pytest.raises(FileNotFoundError) as error:
        clip.load('ViT-B/16')
    message = str(error.value)
    assert str(tmp_path / 'ViT-B-16.pt') in message
    assert '5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f' in message


def test_bad_weight_files_are_named(tmp_path):
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='garbage.pt'):
        clip.load(str(garbage))
    with pytest.raises(FileNotFoundError, match='nowhere.pt'):
        clip.load(str(tmp_path / 'nowhere.pt'))
    torch.save({'visual.layer1.0.conv1.weight': torch.zeros(1)}, tmp_path / 'resnet.pt')
    with pytest.raises(ValueError, match='ResNet'):
        clip.load(str(tmp_path / 'resnet.pt'))


def test_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = clip.MultiheadAttention(64, 4)
    reference = torch.nn.MultiheadAttention(64, 4, batch_first=True)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 7, 64)
    mask = torch.triu(torch.full((7, 7), float('-inf')), diagonal=1)
    torch.testing.assert_close(ours(x), reference(x, x, x, need_weights=False)[0])
    torch.testing.assert_close(ours(x, is_causal=True),
                               reference(x, x, x, attn_mask=mask, need_weights=False)[0])


def test_layer_norm_computes_in_fp32():
    norm = clip.LayerNorm(8)
    x = (torch.randn(4, 8) * 1e3 + 3e4).half()
    out = norm(x)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), torch.nn.functional.layer_norm(x.float(), (8,)).half().float())


def test_layer_norm_keeps_fp64():  # an fp64 copy of a model serves as a rounding-free reference
    norm = clip.LayerNorm(8).double()
    x = torch.randn(4, 8, dtype=torch.float64) * 1e3
    out = norm(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x, (8,)), rtol=1e-12, atol=1e-12)


def _layer_norm_gradients(norm, x, grad_output):
    """(output, d weight, d bias, d input) of ``norm`` at ``x``."""
    norm.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    out = norm(x)
    out.backward(grad_output.to(out.dtype))
    return out.detach(), norm.weight.grad, norm.bias.grad, x.grad


def _relative_error(value, reference):
    return ((value.double() - reference.double()).norm() / reference.double().norm()).item()


def _check_16bit_layer_norm(device):
    """bf16 input under bf16 autocast: bf16 out, fp32-accurate statistics and gradients."""
    torch.manual_seed(0)
    norm = clip.LayerNorm(64).to(device)
    with torch.no_grad():
        norm.weight.normal_(1, 0.2)
        norm.bias.normal_(0, 0.2)
    x = (torch.randn(4096, 64, device=device) * 30 + 500).bfloat16()  # large mean: fp32 statistics needed
    grad_output = torch.randn(4096, 64, device=device).bfloat16()
    reference = torch.nn.LayerNorm(64).to(device).double()
    reference.load_state_dict(norm.state_dict())
    expected = _layer_norm_gradients(reference, x.double(), grad_output)
    with torch.autocast(device, dtype=torch.bfloat16):
        out, *grads = _layer_norm_gradients(norm, x, grad_output)
    assert out.dtype == torch.bfloat16
    assert _relative_error(out, expected[0]) < 1e-2  # bf16 output (and bf16-rounded weight and bias)
    for grad, reference_grad in zip(grads, expected[1:]):
        assert _relative_error(grad, reference_grad) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_16bit_layer_norm_on_cuda_is_fp32_accurate():
    _check_16bit_layer_norm('cuda')


def test_16bit_layer_norm_on_cpu_is_fp32_accurate():
    _check_16bit_layer_norm('cpu')


def test_mlp_equals_quick_gelu_mlp():
    torch.manual_seed(0)
    mlp = clip.layers.MLP(32).double()
    reference = torch.nn.Sequential(mlp.c_fc, clip.QuickGELU(), mlp.c_proj)
    x = torch.randn(5, 32, dtype=torch.float64, requires_grad=True)
    out = mlp(x)
    out.sum().backward()
    ours = [x.grad.clone()] + [p.grad.clone() for p in mlp.parameters()]
    x.grad = None
    mlp.zero_grad()
    expected = reference(x)
    expected.sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    for grad, reference_grad in zip(ours, [x.grad] + [p.grad for p in mlp.parameters()]):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-12, atol=1e-12)


def test_patchify_equals_conv1():
    torch.manual_seed(0)
    tower = clip.VisionTransformer(32, 8, 64, 1, 1, 16).double()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    expected = tower.conv1(images).flatten(2).transpose(1, 2)  # [N, P, W]
    torch.testing.assert_close(tower.patchify(images), expected, rtol=1e-12, atol=1e-12)
