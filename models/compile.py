"""``torch.compile`` of DK-CLIP (``TRAIN.COMPILE``).

:meth:`DKCLIP.encode_and_classify` is compiled in place into one graph: both vision encoders with
their embeddings, the snippet pooling, ``prompts_visual_*``, ``msim``, relevance, erasing, the prompt
generator and the logits; :meth:`encode_text` too when the text encoder runs every step (without
``fix_text``). What stays eager is the text-feature cache (plain Python checks), the loss and the
optimizer. The compiled functions are instance attributes that shadow the methods: the parameters and
the state-dict names stay unchanged (no ``_orig_mod.`` prefix, so checkpoints load either way), and
DDP, which calls ``forward``, reaches them unchanged (checked with two processes on the CPU).
``TRAIN.COMPILE_SCOPE blocks`` compiles only the encoders' block stacks (``nn.Module.compile``), the
earlier design, kept to compare with.

Why whole methods rather than the block stacks alone: with ``TRAIN.COMPILE_MODE reduce-overhead`` every
compiled graph is replayed as a CUDA graph, and what runs between graphs is launched kernel by kernel
from Python, and a tensor passed from one graph to the next is one more thing CUDA graphs must track. On
an H200 (ViT-B/16, T 16, batch 8, bf16) the block stacks alone left the GPU idle ~7 ms of a 51 ms
step, at the embeddings, pooling, ``msim`` and prompt generator between and after them.

The blocks are not compiled one by one, which would compile less code: they differ in their
stochastic-depth rate, a constant each compiled graph is specialised on, so every block would recompile
until ``torch._dynamo``'s recompile limit sent the rest back to eager mode. Dynamo's limit counts
recompilations per code object, shared by every model in the process: training / evaluation x a
dynamic and a size-1 last batch x the models of a test session can pass the default of 8, after which
the rest would silently run eagerly, so :func:`compile_encoders` raises it to :data:`RECOMPILE_LIMIT`.
Activation checkpointing (inside the block stacks) is traced by the compiler.

``TRAIN.COMPILE_MODE`` passes torch.compile's ``mode`` (``utils.engine.compile_options``):
``reduce-overhead`` replays the compiled graphs as CUDA graphs, which removes most of the kernel-launch
work of the host; the engine marks each step's start for them (``utils.engine.mark_compiled_step``).
"""
import logging

import torch

from utils.config import KNOWN_COMPILE_SCOPES

logger = logging.getLogger(__name__)

RECOMPILE_LIMIT = 24


def compiled_parts(model, scope='methods'):
    """Names of what :func:`compile_encoders` compiles in ``model`` (a DKCLIP) for ``scope``."""
    if scope == 'blocks':
        names = ['visual.transformer', 'visual_semantic.transformer']
        return names if model.fix_text else names + ['transformer']
    names = ['encode_and_classify']
    return names if model.fix_text else names + ['encode_text']


def compile_encoders(model, scope='methods', **compile_options):
    """Compile DK-CLIP in place (see the module docstring).

    Args:
        model: a :class:`models.DKCLIP`, or a wrapper holding it in ``.module`` (DDP).
        scope: ``TRAIN.COMPILE_SCOPE``: ``'methods'`` (encode_and_classify and, without ``fix_text``,
            encode_text) or ``'blocks'`` (only the block stacks of the encoders, the earlier design).
        **compile_options: passed to ``torch.compile`` (e.g. ``mode='reduce-overhead'``, ``backend=...``).

    Returns:
        The same ``model``; compilation itself happens on the first call.
    """
    if scope not in KNOWN_COMPILE_SCOPES:
        raise ValueError(f'compile scope must be one of {KNOWN_COMPILE_SCOPES}, got {scope!r}')
    inner = getattr(model, 'module', model)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    parts = compiled_parts(inner, scope)
    for name in parts:
        if scope == 'blocks':
            inner.get_submodule(name).compile(**compile_options)
        else:  # an instance attribute shadows the method; the module's parameters are untouched
            setattr(inner, name, torch.compile(getattr(inner, name), **compile_options))
    logger.info('torch.compile of %s (%s)', ', '.join(parts), compile_options or 'default options')
    return model
