"""The benchmark's model sections: the FLOP formula against torch's FLOP counter, the straightforward
reference model against DK-CLIP, the CPU peak-memory meter, and the command line writing its JSON."""
import json
import time
from types import SimpleNamespace

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import clip
from conftest import tiny_clip_state_dict, tiny_config
from models.builder import build_model
from models.loss import build_criterion
from scripts import benchmark
from scripts.model_benchmark import (PeakMemory, Record, _timed, count_host_syncs, device_busy_seconds,
                                     format_table, forward_flops, input_dims, time_back_to_back)
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
def test_flop_formula_equals_torch_flop_counter(overrides):
    model, config = build(**overrides)
    model.eval()
    batch, text = 3, clip.tokenize(PROMPTS)
    videos = random_videos(batch, config.DATA.NUM_FRAMES)
    with torch.no_grad():
        # The math kernel runs attention as matrix products, which the counter sees (it has no formula
        # for the CPU flash kernel).
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(videos, text)
    flops = forward_flops(input_dims(config, tiny_clip_state_dict()), config, len(PROMPTS), batch)
    assert flops['text'] > 0  # the text tower runs once per step, frozen or not
    assert sum(value for part, value in flops.items() if part != 'total') == flops['total']
    # Every matmul and convolution is in the formula: the counts agree exactly, not just within a few %.
    assert counter.get_total_flops() == pytest.approx(batch * flops['total'], rel=1e-9)


def test_vit_b16_forward_flops_are_the_known_size():
    config = tiny_config(MODEL__ARCH='ViT-B/16', DATA__INPUT_SIZE=224, DATA__NUM_FRAMES=16)
    flops = forward_flops(clip.KNOWN_DIMS['ViT-B/16'], config, num_classes=7, batch_size=8)
    # CLIP's ViT-B/16 image tower is 17.6 GMACs (= 35.1 GFLOPs at 2 per MAC) per 224 px image; the
    # message token adds ~0.4%; visual_semantic runs the same depth without patchify on S = 4 snippets.
    assert 16 * 35.1e9 < flops['visual'] < 16 * 35.5e9
    assert 4 * 34.8e9 < flops['visual_semantic'] < 4 * 35.5e9
    assert flops['visual'] + flops['visual_semantic'] > 0.99 * flops['total']


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
        criterion(logits_global, logits_local, labels, epoch=0)[0].backward()
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


def test_cpu_peak_memory_sees_a_transient_allocation():
    size_mib = 256
    with PeakMemory(torch.device('cpu')) as memory:
        block = torch.ones(size_mib * 2 ** 18)  # 256 MiB of float32, every page touched
        del block
    assert memory.method == 'rss_hwm_reset'
    # the tensor is gone at exit, yet the reset high-water mark still holds it
    assert 0.95 * size_mib < memory.step_mib < 1.2 * size_mib
    assert memory.peak_mib >= memory.step_mib


def test_train_command_writes_the_documented_json(tmp_path):
    path = tmp_path / 'train.json'
    threads = torch.get_num_threads()
    status = benchmark.main(['train', '--preset', 'tiny', '--precision', 'fp32', 'bf16', '--steps', '2',
                             '--warmup', '1', '--peak-tflops', 'bf16=2', 'fp32=1', '--threads', '1',
                             '--json', str(path)])
    assert status == 0 and torch.get_num_threads() == threads  # restored
    result = json.loads(path.read_text())
    assert result['command'] == 'train' and result['model']['preset'] == 'tiny'
    assert result['model']['compile_mode'] == ''  # the rows with compile True run torch's default mode
    assert set(result['environment']) >= {'torch', 'device', 'device_name', 'load_average', 'cpu_bf16'}
    assert result['environment']['threads'] == 1
    config = tiny_config()
    forward = forward_flops(input_dims(config, tiny_clip_state_dict()), config, 7, 2)
    assert result['flops_per_video'] == pytest.approx(forward)
    records = result['results']
    assert [record['precision'] for record in records] == ['fp32', 'bf16']
    for record, peak in zip(records, (1e12, 2e12)):
        assert record['section'] == 'train' and record['implementation'] == 'dkclip'
        assert record['steps'] == 2 and len(record['seconds']) == 2 and record['batch_size'] == 2
        assert record['median_s'] > 0
        assert record['videos_per_s'] == pytest.approx(2 / record['median_s'])
        assert record['flops_per_video'] == pytest.approx(3 * forward['total'])
        achieved = record['flops_per_video'] * record['videos_per_s'] / 1e12
        assert record['achieved_tflops'] == pytest.approx(achieved)
        assert record['mfu'] == pytest.approx(record['achieved_tflops'] * 1e12 / peak)
        assert record['memory_method'] == 'rss_hwm_reset'
        assert record['peak_memory_mib'] > record['step_memory_mib']
        assert record['host_syncs'] is None  # counted on CUDA only
        assert record['device_busy_s'] is None  # kernel time: CUDA only
        # host time, back-to-back time and reserved memory: CUDA only
        assert record['host_s'] is record['back_to_back_s'] is record['back_to_back_mfu'] is None
        assert record['peak_reserved_mib'] is None


def test_eval_and_reference_commands(tmp_path, capsys):
    path = tmp_path / 'eval.json'
    assert benchmark.main(['eval', '--preset', 'tiny', '--precision', 'fp32', '--steps', '1', '--warmup', '1',
                           '--threads', '1', '--opts', 'TEST.NUM_CROP', '3', 'TEST.BATCH_SIZE', '3',
                           '--json', str(path)]) == 0
    (record,) = json.loads(path.read_text())['results']
    assert record['section'] == 'eval' and record['batch_size'] == 3 and not record['checkpoint']
    forward = json.loads(path.read_text())['flops_per_video']['total']
    assert record['flops_per_video'] == pytest.approx(3 * forward)  # 3 views per video

    path = tmp_path / 'reference.json'
    assert benchmark.main(['reference', '--preset', 'tiny', '--steps', '2', '--warmup', '1', '--threads', '1',
                           '--json', str(path)]) == 0
    result = json.loads(path.read_text())
    assert [(r['implementation'], r['precision']) for r in result['results']] == \
        [('reference', 'fp32'), ('dkclip', 'fp32'), ('dkclip', 'bf16')]
    comparison = result['comparison']
    assert comparison['output_relative_differences']['logits_global'] < 2e-6
    assert comparison['output_relative_differences']['logits_local'] < 1e-3
    reference, ours = result['results'][0], result['results'][1]
    assert len(reference['seconds']) == len(ours['seconds']) == 2
    assert comparison['fp32_speedup'] == pytest.approx(reference['median_s'] / ours['median_s'])
    assert comparison['step_memory_mib']['fp32'] == ours['step_memory_mib']
    assert 'fp32_speedup' in capsys.readouterr().out


def test_flops_command_prints_the_breakdown(tmp_path, capsys):
    path = tmp_path / 'flops.json'
    assert benchmark.main(['flops', '--preset', 'tiny', '--json', str(path)]) == 0
    result = json.loads(path.read_text())
    assert result['train_flops_per_video'] == pytest.approx(3 * result['forward_flops_per_video']['total'])
    assert 'visual_semantic' in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_host_syncs_are_counted_on_cuda():
    device = torch.device('cuda')
    values = torch.ones(4, device=device)
    assert count_host_syncs(lambda: values.sum().item(), device) >= 1
    assert count_host_syncs(lambda: values * 2, device) == 0
    assert count_host_syncs(lambda: values.sum().item(), torch.device('cpu')) is None


def _event(device_type, microseconds, is_user_annotation=False):
    return SimpleNamespace(device_type=device_type, self_device_time_total=microseconds,
                           is_user_annotation=is_user_annotation)


def test_device_busy_time_sums_kernels_once_per_step():
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [_event(cuda, 30_000.0), _event(cuda, 12_000.0),
              _event(cpu, 42_000.0),  # an operator's row repeats its kernels' time: not counted
              _event(cuda, 50_000.0, is_user_annotation=True)]  # a profiler range, not a kernel
    assert device_busy_seconds(events, steps=3) == pytest.approx(0.042 / 3)
    assert device_busy_seconds([_event(cpu, 1000.0)], steps=3) is None


def test_step_timing_separates_host_time_from_wall_time():
    calls = []

    def step():
        time.sleep(0.02)
        calls.append(1)
    wall, host = _timed(step, torch.device('cpu'))
    assert calls == [1] and 0.02 <= host <= wall
    assert time_back_to_back(step, torch.device('cpu'), 3) is None and calls == [1]  # CUDA only


def test_table_shows_every_record_and_dashes_for_missing_figures():
    fields = dict(section='train', implementation='dkclip', precision='bf16', compile=True, checkpoint=False,
                  batch_size=8, steps=10, median_s=0.0507, videos_per_s=157.8, peak_memory_mib=2505.0,
                  step_memory_mib=250.0, memory_method='cuda_max_allocated', flops_per_video=2.117e12,
                  achieved_tflops=334.0, mfu=0.338)
    cuda = Record(**fields, host_syncs=0, device_busy_s=0.0436, host_s=0.0311, back_to_back_s=0.0452,
                  back_to_back_mfu=0.379, peak_reserved_mib=11900.0)
    cpu = Record(**dict(fields, mfu=None))
    _, cuda_row, cpu_row = format_table([cuda, cpu]).splitlines()
    for value in ('50.7', '45.2', '43.6', '31.1', '11900', '33.8%', '37.9%'):  # ms, MiB and MFU as shown
        assert value in cuda_row.split()
    assert '-' in cpu_row.split() and 'None' not in cpu_row and '50.7' in cpu_row.split()


def test_profile_prints_the_top_operators(capsys):
    assert benchmark.main(['train', '--preset', 'tiny', '--precision', 'fp32', '--steps', '1', '--warmup', '1',
                           '--threads', '1', '--profile', '5']) == 0
    assert 'aten::' in capsys.readouterr().out  # the operators' table
