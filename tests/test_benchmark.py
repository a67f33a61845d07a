"""The benchmark's model commands (the steps as main.py builds them, the MFU arithmetic, the CPU comparison)
and the straightforward reference model against DK-CLIP."""
import argparse
import json

import pytest
import torch

import clip
from conftest import tiny_clip_state_dict, tiny_config
from models.builder import build_model
from models.loss import build_criterion
from scripts import benchmark
from scripts.reference_model import build_reference_model
from utils.optimizer import build_param_groups

PROMPTS = ['happiness with cheek raiser', 'sadness', 'neutral', 'anger with lid tightener', 'surprise',
           'disgust with nose wrinkler', 'fear']
VARIANTS = [
    {},  # published structure: frozen text, local branch, 2 prompt layers, 1 msim layer
    dict(MODEL__FIX_TEXT=False, DATA__NUM_DIVIDE=2, MODEL__USE_LOCAL=False, MODEL__MSIM_LAYERS=2,
         MODEL__PROMPT_LAYERS=1),
    dict(DATA__NUM_FRAMES=6, DATA__NUM_DIVIDE=3, MODEL__ERASE_THRESHOLD=0.3),  # F = 2, most erased
]


def build(seed=0, **overrides):
    config = tiny_config(**overrides)
    torch.manual_seed(seed)
    return build_model(config, tiny_clip_state_dict(seed)), config


def random_videos(batch, num_frames, seed=1):
    return torch.randn(batch, num_frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('overrides', VARIANTS)
def test_reference_model_gives_our_outputs(overrides):
    model, config = build(**overrides)
    reference = build_reference_model(model)
    videos, text = random_videos(3, config.DATA.NUM_FRAMES), clip.tokenize(PROMPTS)
    with torch.no_grad():
        ours, theirs = model(videos, text), reference(videos, text)
    # The relevance step magnifies float rounding ~100x, so the local logits agree to
    # ~1e-4 of their size, the global logits and video features to ~1e-6.
    for name, mine, other, tolerance in zip(('global', 'local', 'video'), ours, theirs, (2e-6, 1e-3, 1e-6)):
        if mine is None:
            assert other is None and not config.MODEL.USE_LOCAL
            continue
        assert (mine - other).abs().max() <= tolerance * other.abs().max(), name


def test_reference_model_trains_the_same_parameters_with_the_same_gradients():
    model, config = build()
    build_param_groups(model, config)  # freezes as configured (msim, visual_semantic, text, ...)
    reference = build_reference_model(model)
    criterion = build_criterion(config)
    videos, text, labels = random_videos(3, 8), clip.tokenize(PROMPTS), torch.tensor([0, 3, 5])
    for network in (model, reference):
        logits_global, logits_local, _ = network(videos, text)
        criterion(labels, 0, logits_global=logits_global, logits_local=logits_local)[0].backward()
    ours = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    theirs = {name: p.grad for name, p in reference.named_parameters() if p.grad is not None}
    assert ours.keys() == theirs.keys() and any(name.startswith('visual.') for name in ours)
    assert not any(name.startswith(('msim.', 'visual_semantic.', 'transformer.')) for name in ours)
    for name, grad in ours.items():  # the relevance's magnified rounding reaches every gradient
        assert (grad - theirs[name]).norm() <= 1e-3 * theirs[name].norm(), name


def test_reference_refuses_stochastic_depth():
    model, _ = build(MODEL__DROP_PATH_RATE=0.1)
    with pytest.raises(ValueError, match='MODEL.DROP_PATH_RATE'):
        build_reference_model(model)


def test_train_command_reports_consistent_figures(tmp_path):
    path = tmp_path / 'train.json'
    threads = torch.get_num_threads()
    assert benchmark.main(['train', '--preset', 'tiny', '--precision', 'fp32', 'bf16', '--checkpoint', 'off', 'on',
                           '--steps', '2', '--warmup', '1', '--peak-tflops', 'bf16=2', 'fp32=1', '--threads', '1',
                           '--json', str(path)]) == 0
    assert torch.get_num_threads() == threads  # restored
    result = json.loads(path.read_text())
    assert result['environment']['threads'] == 1 and result['forward_flops_per_video'] > 0
    rows = result['results']
    assert [(row['precision'], row['checkpoint']) for row in rows] == [('fp32', False), ('fp32', True),
                                                                       ('bf16', False), ('bf16', True)]
    for row in rows:
        assert row['section'] == 'train' and row['batch_size'] == 2 and len(row['seconds']) == 2
        assert row['videos_per_s'] == pytest.approx(2 / row['median_s'])
        assert row['step_flops'] == pytest.approx(3 * 2 * result['forward_flops_per_video'])  # backward 2x
        peak = {'fp32': 1e12, 'bf16': 2e12}[row['precision']]
        assert row['mfu'] == pytest.approx(row['step_flops'] / row['median_s'] / peak)
        # back-to-back time and memory are CUDA figures
        assert row['back_to_back_s'] is row['peak_allocated_gib'] is row['back_to_back_mfu'] is None


def test_the_published_model_counts_the_flops_of_its_frames_and_snippets():
    # built and counted on the meta device: shapes only, no arithmetic
    config = benchmark.benchmark_config(argparse.Namespace(preset='vit-b16', config='', opts=None), 'fp32')
    with torch.device('meta'):
        flops = benchmark.forward_flops_per_video(config, torch.device('meta'))
    # CLIP's ViT-B/16 image tower is 35.1 GFLOPs per 224 px image: 16 frames in the local encoder, 4 snippets
    # in the integration encoder (no patchify), the message tokens, the text tower and the head on top
    assert 20 * 35.1e9 < flops < 20 * 35.8e9


def test_eval_command_counts_every_view(tmp_path):
    path = tmp_path / 'eval.json'
    assert benchmark.main(['eval', '--preset', 'tiny', '--precision', 'fp32', '--steps', '1', '--warmup', '1',
                           '--threads', '1', '--opts', 'TEST.NUM_CROP', '3', 'TEST.BATCH_SIZE', '3',
                           '--json', str(path)]) == 0
    result = json.loads(path.read_text())
    (row,) = result['results']
    assert row['section'] == 'eval' and row['batch_size'] == 3 and not row['checkpoint']
    assert row['step_flops'] == pytest.approx(3 * 3 * result['forward_flops_per_video'])  # 3 views x 3 videos


def test_reference_command_compares_outputs_and_speed(tmp_path, capsys):
    path = tmp_path / 'reference.json'
    assert benchmark.main(['reference', '--preset', 'tiny', '--steps', '2', '--warmup', '1', '--threads', '1',
                           '--json', str(path)]) == 0
    comparison = json.loads(path.read_text())['comparison']
    assert comparison['output_relative_differences']['logits_global'] < 2e-6
    assert comparison['output_relative_differences']['logits_local'] < 1e-3
    seconds = comparison['seconds']
    assert {name: len(times) for name, times in seconds.items()} == {'reference_fp32': 2, 'fp32': 2, 'bf16': 2}
    median = {name: sorted(times)[0] + (sorted(times)[1] - sorted(times)[0]) / 2 for name, times in seconds.items()}
    assert comparison['fp32_speedup'] == pytest.approx(median['reference_fp32'] / median['fp32'])
    assert 'fp32_speedup' in capsys.readouterr().out


def test_profile_prints_the_top_operators(capsys):
    assert benchmark.main(['train', '--preset', 'tiny', '--precision', 'fp32', '--steps', '1', '--warmup', '1',
                           '--threads', '1', '--profile', '5']) == 0
    assert 'aten::' in capsys.readouterr().out  # the operators' table
