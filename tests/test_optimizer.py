"""Parameter groups, freezing, one optimisation step and the learning-rate schedule (docs/model.md, section 13)."""
import math

import pytest
import torch

import clip
from conftest import tiny_clip_state_dict, tiny_config
from models.builder import build_model
from models.loss import build_criterion
from utils.optimizer import build_optimizer, build_param_groups, build_scheduler, format_param_groups

# Tensor counts of the tiny model (2 vision layers, 2 text layers, 2 prompt layers, 1 msim layer):
# visual 48 = 32 CLIP tensors (10 decayed: conv1, proj, 4 matrices x 2 blocks) + 16 message_* (6 matrices);
# visual_semantic 47 (3 unused: ln_post, proj), msim 13 (4 matrices), prompt generator 29 (12 matrices),
# prompts_visual_ln 2, prompts_visual_proj 1, text encoder 29 (10 matrices) + logit_scale.
EXPECTED_COUNTS = {
    'published': ({'base/decay': 10, 'base/no_decay': 22, 'new/decay': 19, 'new/no_decay': 29}, 90),
    # + visual_semantic (16 message_* tensors new, 28 base) and msim (13, new rate)
    'train_integration': ({'base/decay': 18, 'base/no_decay': 42, 'new/decay': 29, 'new/no_decay': 48}, 33),
    # everything but the 3 unused tensors; msim at the base rate; the 0-d logit_scale is decayed
    'train_text': ({'base/decay': 33, 'base/no_decay': 70, 'new/decay': 25, 'new/no_decay': 39}, 3),
}
MODES = {
    'published': {},
    'train_integration': dict(MODEL__TRAIN_INTEGRATION=True),
    'train_text': dict(MODEL__FIX_TEXT=False),
}


def build(mode, **overrides):
    config = tiny_config(TRAIN__LR=1e-3, TRAIN__WEIGHT_DECAY=0.05, **MODES[mode], **overrides)
    torch.manual_seed(0)
    return build_model(config, tiny_clip_state_dict()), config


def group_of(groups, name, model):
    parameter = dict(model.named_parameters())[name]
    return next((group['name'] for group in groups if any(p is parameter for p in group['params'])), None)


@pytest.mark.parametrize('mode', list(MODES))
def test_group_counts_learning_rates_and_decay(mode):
    model, config = build(mode)
    groups = build_param_groups(model, config)
    expected_counts, expected_frozen = EXPECTED_COUNTS[mode]
    assert {group['name']: len(group['params']) for group in groups} == expected_counts
    assert sum(not p.requires_grad for p in model.parameters()) == expected_frozen
    for group in groups:
        assert group['lr'] == pytest.approx(1e-2 if group['name'].startswith('new') else 1e-3)
        assert group['weight_decay'] == (0.05 if group['name'].endswith('/decay') else 0.0)
        assert all(p.requires_grad for p in group['params'])
    trains = mode != 'published'  # msim and visual_semantic train in the other two modes
    msim_matrix = {'published': None, 'train_integration': 'new/decay', 'train_text': 'base/decay'}[mode]
    places = {
        'visual.conv1.weight': 'base/decay', 'visual.class_embedding': 'base/no_decay',
        'visual.positional_embedding': 'base/no_decay',
        'visual.transformer.resblocks.0.ln_1.bias': 'base/no_decay',
        'visual.transformer.resblocks.1.message_fc.weight': 'new/decay',
        'visual.transformer.resblocks.1.message_ln.weight': 'new/no_decay',
        'prompts_visual_proj': 'new/decay', 'prompts_generator_cmam.alpha': 'new/no_decay',
        'visual_semantic.proj': None, 'visual_semantic.ln_post.weight': None,  # never used: always frozen
        'msim.resblocks.0.mlp.c_fc.weight': msim_matrix,
        'visual_semantic.transformer.resblocks.0.attn.in_proj_weight': 'base/decay' if trains else None,
        'visual_semantic.transformer.resblocks.1.message_fc.bias': 'new/no_decay' if trains else None,
        'visual_semantic.class_embedding': 'base/no_decay' if trains else None,
        'logit_scale': 'base/decay' if mode == 'train_text' else None,
        'text_projection': 'base/decay' if mode == 'train_text' else None,
    }
    assert {name: group_of(groups, name, model) for name in places} == places


@pytest.mark.parametrize('mode', list(MODES))
def test_one_step_trains_exactly_what_should_train(mode):
    model, config = build(mode)
    optimizer = build_optimizer(config, model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    text = clip.tokenize(['happy', 'sad', 'angry', 'calm'])
    logits_global, logits_local, _ = model(torch.randn(2, 8, 3, 32, 32), text)
    loss, _ = build_criterion(config)(logits_global, logits_local, torch.tensor([0, 3]), epoch=0)
    loss.backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    optimizer.step()
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]) != parameter.requires_grad, name


def test_adamw_settings_and_log_table():
    model, config = build('published')
    optimizer = build_optimizer(config, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults['betas'] == (0.9, 0.98) and optimizer.defaults['eps'] == 1e-8
    assert optimizer.defaults['fused']  # one fused kernel per tensor, on the CPU as on CUDA
    assert [group['name'] for group in optimizer.param_groups] == list(EXPECTED_COUNTS['published'][0])
    table = format_param_groups(model, optimizer.param_groups).splitlines()
    assert table[0].split() == ['group', 'tensors', 'parameters', 'lr', 'wd']
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    assert rows['new/decay'][:3] == ['19', f"{sum(p.numel() for p in optimizer.param_groups[2]['params']):,}",
                                     '1.00e-02']
    frozen_numel = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert rows['frozen'][:2] == ['90', f'{frozen_numel:,}']


def test_fused_update_equals_the_per_tensor_adamw():
    model, config = build('published')
    optimizer = build_optimizer(config, model)
    plain_model, _ = build('published')
    plain = torch.optim.AdamW(build_param_groups(plain_model, config), lr=config.TRAIN.LR,
                              betas=(0.9, 0.98), eps=1e-8, foreach=False, fused=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(model.parameters(), plain_model.parameters()):
            if p.requires_grad:
                p.grad = torch.randn(p.shape, generator=generator)
                q.grad = p.grad.clone()
        optimizer.step()
        plain.step()
    for (name, p), q in zip(model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_wrapped_model_is_unwrapped():
    model, config = build('published')

    class Wrapper(torch.nn.Module):  # what DistributedDataParallel looks like from here
        def __init__(self, module):
            super().__init__()
            self.module = module

    groups = build_param_groups(Wrapper(model), config)
    assert {group['name']: len(group['params']) for group in groups} == EXPECTED_COUNTS['published'][0]


def test_schedule_warms_up_linearly_then_follows_the_cosine():
    model, config = build('published', TRAIN__EPOCHS=10, TRAIN__WARMUP_EPOCHS=2, TRAIN__MIN_LR_RATIO=0.01)
    optimizer = build_optimizer(config, model)
    updates_per_epoch = 5
    scheduler = build_scheduler(config, optimizer, updates_per_epoch)
    total, warmup, floor = 50, 10, 1e-3 * 0.01

    def expected_lr(step, base):  # timm's cosine without warmup prefix: the cosine counts from step 0
        if step < warmup:
            return base * step / warmup
        return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * step / total))

    assert [group['lr'] for group in optimizer.param_groups] == [0.0] * 4  # warm-up starts at 0
    for step in (1, 5, 10, 20, 37, 49):
        scheduler.step_update(step)
        for group in optimizer.param_groups:
            base = 1e-2 if group['name'].startswith('new') else 1e-3
            assert group['lr'] == pytest.approx(expected_lr(step, base), rel=1e-9), (step, group['name'])
    with pytest.raises(ValueError, match='updates_per_epoch'):
        build_scheduler(config, optimizer, 0)
