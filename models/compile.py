"""``torch.compile`` of DK-CLIP's encoders (``TRAIN.COMPILE``).

The block stack (``transformer``) of each encoder is compiled in place with ``nn.Module.compile``: the
state-dict names stay unchanged (no ``_orig_mod.`` prefix, so checkpoints load either way), and one
graph covers all blocks of an encoder. Compiling block by block would compile less code, but the
blocks differ in their stochastic-depth rate, a constant that each compiled graph is specialised on, so
every block would recompile until ``torch._dynamo``'s recompile limit sends the rest back to eager mode.
Activation checkpointing (inside the stack) is traced by the compiler.

The stacks share one code object (``Transformer.forward``), and dynamo's limit of recompilations counts
per code object: 2-3 stacks x training / evaluation x a dynamic and a size-1 last batch can pass the
default of 8, after which the rest would silently run eagerly. :func:`compile_encoders` raises the limit
to :data:`RECOMPILE_LIMIT`. The text-feature cache and the
head run eagerly: they are small, and the cache's checks are plain Python.

``TRAIN.COMPILE_MODE`` passes torch.compile's ``mode`` (``utils.engine.compile_options``):
``reduce-overhead`` replays the compiled stacks as CUDA graphs, which removes most of the kernel-launch
work of the host; the engine marks each step's start for them (``utils.engine.mark_compiled_step``).
"""
import logging

import torch

logger = logging.getLogger(__name__)

# Enough for 3 stacks x 2 grad modes x (static, dynamic, size-1) batch shapes.
RECOMPILE_LIMIT = 24


def compile_encoders(model, **compile_options):
    """Compile the block stacks of ``visual`` and ``visual_semantic`` (and of the text encoder when it
    runs every step, i.e. without ``fix_text``) in place.

    Args:
        model: a :class:`models.DKCLIP`, or a wrapper holding it in ``.module`` (DDP).
        **compile_options: passed to ``torch.compile`` (e.g. ``mode='max-autotune'``, ``backend=...``).

    Returns:
        The same ``model``; compilation itself happens on the first forward pass.
    """
    inner = getattr(model, 'module', model)
    stacks = {'visual': inner.visual.transformer, 'visual_semantic': inner.visual_semantic.transformer}
    if not inner.fix_text:
        stacks['text'] = inner.transformer
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for stack in stacks.values():
        stack.compile(**compile_options)
    logger.info('torch.compile of the %s blocks (%s)', ', '.join(stacks),
                compile_options or 'default options')
    return model
