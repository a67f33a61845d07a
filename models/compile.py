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

``TRAIN.COMPILE_MEMORY_BUDGET`` sets ``torch._functorch.config.activation_memory_budget`` while the
graphs compile. AOTAutograd's partitioner places the activations kept for backward between the least the
graph could keep (its inputs: 0, like checkpointing the whole graph) and what it keeps by default (1).
Below 1 it first lifts its bans on recomputing element-wise work (results used far apart, long fusible
chains, results that backward would materialise anyway) and only where that stays above the budget
recomputes more, cheapest first by FLOPs. For one ViT-B/16 cross-frame block (fp32, 32 frames, CPU)
budgets of 0.9, 0.8 and 0.7 all stopped at the first stage: the kept activations fell from 17.3 to 11.3
token-sized tensors, the MLP's 4W-wide activation and the outputs of ``ln_1`` and ``ln_2`` being
recomputed, no matrix product. The setting is process-wide in torch, so a compiled function with a
budget below 1 sets it only around its own calls (compilation happens in the first call). Dynamo's
guards do not include it: a second model of the same architecture in the process reuses the graphs
compiled for the first, with the first one's budget, unless ``torch._dynamo.reset()`` runs in between
(the benchmark resets before each setting).
"""
import functools
import logging

import torch
from torch._functorch import config as functorch_config

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


def under_memory_budget(function, memory_budget):
    """``function`` wrapped so that it runs, and compiles, with AOTAutograd's activation memory budget
    set to ``memory_budget`` (see the module docstring); ``function`` itself for the default, 1."""
    if memory_budget == 1.0:  # the default touches no private setting of torch
        return function
    if not hasattr(functorch_config, 'activation_memory_budget'):
        raise RuntimeError(f'TRAIN.COMPILE_MEMORY_BUDGET = {memory_budget} needs '
                           f'torch._functorch.config.activation_memory_budget (torch >= 2.4), '
                           f'not in torch {torch.__version__}')

    @functools.wraps(function)
    def call(*args, **kwargs):
        with functorch_config.patch(activation_memory_budget=memory_budget):
            return function(*args, **kwargs)
    return call


def compile_encoders(model, scope='methods', memory_budget=1.0, **compile_options):
    """Compile DK-CLIP in place (see the module docstring).

    Args:
        model: a :class:`models.DKCLIP`, or a wrapper holding it in ``.module`` (DDP).
        scope: ``TRAIN.COMPILE_SCOPE``: ``'methods'`` (encode_and_classify and, without ``fix_text``,
            encode_text) or ``'blocks'`` (only the block stacks of the encoders, the earlier design).
        memory_budget: ``TRAIN.COMPILE_MEMORY_BUDGET`` in [0, 1]: where the activations the compiled
            graphs keep for backward lie between the least they could keep (0) and torch's default (1).
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
            module = inner.get_submodule(name)
            module.compile(**compile_options)
            module._compiled_call_impl = under_memory_budget(module._compiled_call_impl, memory_budget)
        else:  # an instance attribute shadows the method; the module's parameters are untouched
            compiled = torch.compile(getattr(inner, name), **compile_options)
            setattr(inner, name, under_memory_budget(compiled, memory_budget))
    logger.info('torch.compile of %s (%s, activation memory budget %g)', ', '.join(parts),
                compile_options or 'default options', memory_budget)
    return model
