"""What trains at which learning rate (docs/model.md, section 13), the AdamW optimizer and the cosine schedule.

Rules, by parameter name:
- trains: with ``MODEL.FIX_TEXT`` (published) iff the name contains ``visual.``, ``mit`` or ``prompts``
  (the release's filter; ``msim.*`` and ``visual_semantic.*`` stay frozen) - plus ``msim.*`` and
  ``visual_semantic.*`` with ``MODEL.TRAIN_INTEGRATION``; everything without ``FIX_TEXT``. Parameters the
  forward pass never uses (``DKCLIP.UNUSED_PARAMETER_PREFIXES``) are always frozen, so DDP needs no
  ``find_unused_parameters``.
- learning rate: ``TRAIN.LR``, times ``TRAIN.NEW_MODULE_LR_SCALE`` for names containing ``message_``,
  ``mit`` or ``prompts`` (and ``msim.*`` with ``TRAIN_INTEGRATION``: X-CLIP gave its ``mit`` that rate).
- weight decay ``TRAIN.WEIGHT_DECAY`` except for 1-D parameters, biases and positional embeddings (the
  0-d ``logit_scale`` is decayed, as released, when it trains).
"""
import logging

import torch
from timm.scheduler import CosineLRScheduler

from utils.distributed import unwrap_model

logger = logging.getLogger(__name__)

TRAINABLE_WITH_FIXED_TEXT = ('visual.', 'mit', 'prompts')
NEW_MODULE_KEYWORDS = ('message_', 'mit', 'prompts')
INTEGRATION_PREFIXES = ('msim.', 'visual_semantic.')
GROUP_ORDER = ('base/decay', 'base/no_decay', 'new/decay', 'new/no_decay')
ADAMW_BETAS = (0.9, 0.98)
ADAMW_EPS = 1e-8
# Devices with a fused AdamW kernel that this project runs on.
FUSED_ADAMW_DEVICES = ('cuda', 'cpu')


def is_trainable(name, config, unused_prefixes=()):
    """Whether parameter ``name`` trains under ``MODEL.FIX_TEXT`` / ``MODEL.TRAIN_INTEGRATION``."""
    if name.startswith(tuple(unused_prefixes)):
        return False
    if not config.MODEL.FIX_TEXT or any(keyword in name for keyword in TRAINABLE_WITH_FIXED_TEXT):
        return True
    return config.MODEL.TRAIN_INTEGRATION and name.startswith(INTEGRATION_PREFIXES)


def lr_scale(name, config):
    """Factor of ``TRAIN.LR`` for parameter ``name``: ``TRAIN.NEW_MODULE_LR_SCALE`` or 1."""
    is_new = any(keyword in name for keyword in NEW_MODULE_KEYWORDS)
    is_new = is_new or (config.MODEL.TRAIN_INTEGRATION and name.startswith('msim.'))
    return config.TRAIN.NEW_MODULE_LR_SCALE if is_new else 1.0


def uses_weight_decay(name, parameter):
    """No decay for 1-D parameters (LayerNorms, class embeddings, alpha), biases, positional embeddings."""
    return not (parameter.ndim == 1 or name.endswith('.bias') or 'positional_embedding' in name)


def build_param_groups(model, config):
    """AdamW parameter groups of ``model`` under ``config``; freezes what does not train.

    Sets ``requires_grad`` of every parameter (False where frozen) - call it before wrapping the model
    in DistributedDataParallel.

    Returns:
        list[dict]: non-empty groups ``{'name', 'params', 'lr', 'weight_decay'}`` named
        ``base/decay``, ``base/no_decay``, ``new/decay``, ``new/no_decay`` (new = the scaled LR).
    """
    model = unwrap_model(model)
    unused = getattr(model, 'UNUSED_PARAMETER_PREFIXES', ())
    groups = {}
    for name, parameter in model.named_parameters():
        trainable = is_trainable(name, config, unused)
        parameter.requires_grad_(trainable)
        if not trainable:
            continue
        scale, decay = lr_scale(name, config), uses_weight_decay(name, parameter)
        group_name = f"{'new' if scale != 1.0 else 'base'}/{'decay' if decay else 'no_decay'}"
        group = groups.setdefault(group_name, dict(
            name=group_name, params=[], lr=config.TRAIN.LR * scale,
            weight_decay=config.TRAIN.WEIGHT_DECAY if decay else 0.0))
        group['params'].append(parameter)
    return [groups[name] for name in GROUP_ORDER if name in groups]


def format_param_groups(model, groups):
    """A table of the groups (tensors, parameters, LR, weight decay) and of the frozen rest, for the log."""
    lines = [f"{'group':<14}{'tensors':>8}{'parameters':>14}{'lr':>11}{'wd':>10}"]
    for group in groups:
        count = sum(parameter.numel() for parameter in group['params'])
        lines.append(f"{group['name']:<14}{len(group['params']):>8}{count:>14,}{group['lr']:>11.2e}"
                     f"{group['weight_decay']:>10.1e}")
    frozen = [parameter for parameter in unwrap_model(model).parameters() if not parameter.requires_grad]
    lines.append(f"{'frozen':<14}{len(frozen):>8}{sum(p.numel() for p in frozen):>14,}{'-':>11}{'-':>10}")
    return '\n'.join(lines)


def build_optimizer(config, model):
    """AdamW (betas (0.9, 0.98), eps 1e-8) over :func:`build_param_groups`; logs the group table.

    The fused implementation (one pass per parameter tensor instead of several) is used when every
    parameter is on CUDA or on the CPU: the same arithmetic, several times faster (docs/performance.md,
    "Fused AdamW on the CPU and the GPU").
    """
    groups = build_param_groups(model, config)
    parameters = [parameter for group in groups for parameter in group['params']]
    device_types = {parameter.device.type for parameter in parameters}
    fused = len(device_types) == 1 and device_types <= set(FUSED_ADAMW_DEVICES)
    logger.info('parameter groups:\n%s', format_param_groups(model, groups))
    return torch.optim.AdamW(groups, lr=config.TRAIN.LR, betas=ADAMW_BETAS, eps=ADAMW_EPS,
                             fused=fused or None)


def build_scheduler(config, optimizer, updates_per_epoch):
    """timm's cosine schedule with linear warm-up from 0, in optimizer updates
    (call ``scheduler.step_update(num_updates)`` after each update).

    The schedule spans ``TRAIN.EPOCHS`` epochs, warms up over ``TRAIN.WARMUP_EPOCHS`` and ends at
    ``TRAIN.LR * TRAIN.MIN_LR_RATIO`` (the same floor for every group, as released).
    """
    if updates_per_epoch < 1:
        raise ValueError(f'updates_per_epoch = {updates_per_epoch}: the training set yields no update')
    return CosineLRScheduler(
        optimizer,
        t_initial=int(config.TRAIN.EPOCHS * updates_per_epoch),
        lr_min=config.TRAIN.LR * config.TRAIN.MIN_LR_RATIO,
        warmup_lr_init=0.0,
        warmup_t=int(config.TRAIN.WARMUP_EPOCHS * updates_per_epoch),
        cycle_limit=1,
        t_in_epochs=False,
    )
