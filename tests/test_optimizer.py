"""Parameter groups, freezing, one optimisation step and the learning-rate schedule (docs/model.md, section 13)."""
import math

import pytest
import torch

import clip
from conftest import tiny_clip_state_dict, tiny_config
from models.builder import build_model
from models.loss import build_criterion
from utils.optimizer import build_optimizer, build_param_groups, build_scheduler, format_param_groups

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


TEXT_TOWER = ('transformer.', 'token_embedding.', 'positional_embedding', 'ln_final.', 'text_projection',
              'logit_scale')
PROMPT_MODULES = ('prompts_generator_cmam.', 'prompts_visual_ln.', 'prompts_visual_proj')


def expected_setting(name, parameter, mode):
    """The rule of docs/model.md section 13, stated by module: (learning-rate factor, decays) or None
    for a frozen parameter."""
    if name.startswith(('visual_semantic.ln_post.', 'visual_semantic.proj')):
        return None  # never used by the forward pass: frozen in every mode
    integration = name.startswith(('msim.', 'visual_semantic.'))
    trains = {'published': name.startswith(('visual.',) + PROMPT_MODULES),
              'train_integration': not name.startswith(TEXT_TOWER),
              'train_text': True}[mode]
    if not trains:
        return None
    new = '.message_' in name or name.startswith(PROMPT_MODULES) or (
        mode == 'train_integration' and name.startswith('msim.'))
    decays = parameter.ndim != 1 and not name.endswith('.bias') and 'positional_embedding' not in name
    assert not (integration and mode == 'published')
    return (10.0 if new else 1.0), decays


@pytest.mark.parametrize('mode', list(MODES))
def test_every_parameter_gets_the_learning_rate_and_decay_of_the_rule(mode):
    model, config = build(mode)
    groups = build_param_groups(model, config)
    for name, parameter in model.named_parameters():
        expected = expected_setting(name, parameter, mode)
        assert parameter.requires_grad == (expected is not None), name
        group = next((g for g in groups if any(p is parameter for p in g['params'])), None)
        if expected is None:
            assert group is None, name
            continue
        scale, decays = expected
        assert group['lr'] == pytest.approx(1e-3 * scale), name
        assert group['weight_decay'] == (0.05 if decays else 0.0), name
    assert len({id(p) for g in groups for p in g['params']}) == sum(len(g['params']) for g in groups)


@pytest.mark.parametrize('mode', list(MODES))
def test_named_parameters_land_in_the_expected_groups(mode):
    model, config = build(mode)
    groups = build_param_groups(model, config)
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
    outputs = model(torch.randn(2, 8, 3, 32, 32), text, return_details=True)
    loss, _ = build_criterion(config)(torch.tensor([0, 3]), 0, **outputs)
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
    assert [group['name'] for group in optimizer.param_groups] == ['base/decay', 'base/no_decay', 'new/decay',
                                                                   'new/no_decay']
    table = format_param_groups(model, optimizer.param_groups).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in table[1:]}
    new_decay = optimizer.param_groups[2]['params']
    assert rows['new/decay'][:3] == [str(len(new_decay)), f"{sum(p.numel() for p in new_decay):,}", '1.00e-02']
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert rows['frozen'][:2] == [str(len(frozen)), f'{sum(p.numel() for p in frozen):,}']


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

    wrapped = build_param_groups(Wrapper(model), config)
    plain = build_param_groups(model, config)
    assert [[id(p) for p in group['params']] for group in wrapped] == [[id(p) for p in group['params']]
                                                                        for group in plain]


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
