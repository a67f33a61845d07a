"""``models.compile_encoders`` (``TRAIN.COMPILE``): names, outputs and gradients unchanged.

The fast test compiles with the ``aot_eager`` backend (dynamo's graph capture and AOTAutograd's
forward/backward split, without generating kernels); the inductor test generates and builds C++ kernels,
over a minute on 2 cores, and is marked slow.
"""
import pytest
import torch

import clip
import models
from conftest import tiny_clip_state_dict, tiny_config
from models.compile import compiled_parts


def build(**overrides):
    config = tiny_config(**overrides)
    torch.manual_seed(0)
    model = models.build_model(config, tiny_clip_state_dict())
    return model, models.build_criterion(config)


def train_step(model, criterion, device='cpu'):
    """One forward and backward on fixed inputs; returns copies of the outputs and the gradients (a CUDA
    graph's outputs are overwritten by its next replay)."""
    model.zero_grad()
    videos = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    logits_global, logits_local, features = model(videos, clip.tokenize(['smile', 'frown', 'neutral']).to(device))
    criterion(logits_global, logits_local, torch.tensor([0, 2], device=device), epoch=0)[0].backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return [output.detach().clone() for output in (logits_global, logits_local, features)], grads


def assert_outputs_and_grads_close(outputs, grads, expected_outputs, expected_grads):
    for output, expected in zip(outputs, expected_outputs):
        torch.testing.assert_close(output, expected, rtol=1e-4, atol=1e-4)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-3, atol=1e-5, msg=name)


def compiled_now(model):
    """What of ``model`` is compiled: names of shadowed methods and of compiled submodules."""
    methods = [name for name in ('encode_and_classify', 'encode_text') if name in vars(model)]
    modules = [name for name, module in model.named_modules() if module._compiled_call_impl is not None]
    return methods + modules


def assert_compiled_equals_eager(backend, scope='methods', memory_budget=1.0, **overrides):
    # inductor fuses and reorders reductions (softmax, LayerNorm), so fp32 results differ in the last
    # few bits: the tolerance allows that and nothing more.
    eager, criterion = build(**overrides)
    compiled, _ = build(**overrides)
    names = list(compiled.state_dict())
    assert models.compile_encoders(compiled, scope=scope, memory_budget=memory_budget,
                                   backend=backend) is compiled
    assert list(compiled.state_dict()) == names  # checkpoints load either way
    assert sorted(compiled_now(compiled)) == sorted(compiled_parts(compiled, scope))
    expected_outputs, expected_grads = train_step(eager, criterion)
    for _ in range(2):  # the second step runs the cached graphs
        assert_outputs_and_grads_close(*train_step(compiled, criterion), expected_outputs, expected_grads)


def test_compiled_encoders_keep_names_outputs_and_gradients():
    torch._dynamo.reset()
    assert_compiled_equals_eager('aot_eager', TRAIN__USE_CHECKPOINT=True)


def test_compiled_block_stacks_keep_names_outputs_and_gradients():
    torch._dynamo.reset()
    assert_compiled_equals_eager('aot_eager', scope='blocks', MODEL__FIX_TEXT=False)


def kept_for_backward_bytes(model):
    """Bytes of the distinct storages that ``model``'s forward pass keeps for backward."""
    storages = {}

    def keep(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor
    videos = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(videos, clip.tokenize(['smile', 'frown', 'neutral']))
    return sum(storages.values())


@pytest.mark.parametrize('scope', ['methods', 'blocks'])
def test_memory_budget_recomputes_instead_of_keeping(scope):
    # The partitioner of aot_eager_decomp_partition is inductor's, without generating kernels.
    kept = {}
    for budget in (0.5, 1.0):
        torch._dynamo.reset()  # dynamo would reuse the graphs compiled under the other budget
        assert_compiled_equals_eager('aot_eager_decomp_partition', scope=scope, memory_budget=budget)
        model, _ = build()
        models.compile_encoders(model, scope=scope, memory_budget=budget,
                                backend='aot_eager_decomp_partition')
        kept[budget] = kept_for_backward_bytes(model)
    assert kept[0.5] < 0.8 * kept[1.0], kept
    assert torch._functorch.config.activation_memory_budget == 1.0  # set only around the compiled calls


@pytest.mark.slow
def test_inductor_compiled_encoders_match_eager():
    torch._dynamo.reset()
    assert_compiled_equals_eager('inductor', MODEL__FIX_TEXT=False)


def assert_train_then_evaluate_like_eager(device, **compile_options):
    """Train one compiled model 3 steps, evaluate it, then evaluate a second, fresh compiled model in the
    same process: every output and gradient as in eager mode."""
    from utils import engine
    torch._dynamo.reset()
    config = tiny_config(TRAIN__COMPILE=True, TRAIN__COMPILE_MODE=compile_options.get('mode', ''))
    eager, criterion = build()
    expected_outputs, expected_grads = train_step(eager.to(device), criterion, device)
    videos = torch.randn(3, 8, 3, 32, 32, generator=torch.Generator().manual_seed(2)).to(device)
    tokens = clip.tokenize(['smile', 'frown', 'neutral']).to(device)
    with torch.no_grad():
        expected_logits = eager.eval()(videos, tokens)[0]
    for trains in (True, False):  # the second model is only evaluated, after the first one's graphs
        compiled, _ = build()
        models.compile_encoders(compiled.to(device), **compile_options)
        for _ in range(3 if trains else 0):  # CUDA graphs: warm-up, recording, replay
            engine.mark_compiled_step(config)
            assert_outputs_and_grads_close(*train_step(compiled, criterion, device), expected_outputs,
                                           expected_grads)
        compiled.eval()
        for _ in range(3):
            engine.mark_compiled_step(config)
            with torch.no_grad():
                logits = compiled(videos, tokens)[0].clone()
            torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)


def test_compiled_models_train_and_evaluate_like_eager_one_after_another():
    assert_train_then_evaluate_like_eager(torch.device('cpu'), backend='aot_eager')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_graphs_train_and_evaluate_like_eager():
    # TRAIN.COMPILE_MODE reduce-overhead replays the compiled graph as CUDA graphs. On an H200, while the
    # head still had a graph break, a model evaluated after another one had trained in the same process
    # read outputs that a later replay had overwritten.
    assert_train_then_evaluate_like_eager(torch.device('cuda'), mode='reduce-overhead')


def test_compiled_parts_by_scope():
    model, _ = build(MODEL__FIX_TEXT=False)
    assert compiled_parts(model) == ['encode_and_classify', 'encode_text']
    assert compiled_parts(model, 'blocks') == ['visual.transformer', 'visual_semantic.transformer', 'transformer']
    with pytest.raises(ValueError, match='compile scope'):
        models.compile_encoders(model, scope='everything')


def test_video_encoder_and_head_trace_into_one_graph(monkeypatch):
    # With CUDA graphs (reduce-overhead) whatever a graph break leaves between graphs is launched from
    # Python kernel by kernel. Dynamo of torch 2.11 cannot trace torch.amp.is_autocast_available (a C
    # builtin); the head called it and broke the graph twice on an H200, after which the resumed
    # function recompiled every step. The stand-in below is as untraceable on any torch version. The
    # 16-bit LayerNorm path is CUDA's (run here on the CPU): an untraceable helper there once split the
    # block stacks into dozens of graphs on the H200 and made the compiled step slower than eager.
    monkeypatch.setattr(clip.layers, 'NATIVE_16BIT_LAYER_NORM_DEVICES', ('cpu',))
    monkeypatch.setattr(torch.amp, 'is_autocast_available',
                        torch._dynamo.disable(torch.amp.is_autocast_available))
    model, _ = build()
    videos = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        text_features = model.encode_prompts(clip.tokenize(['smile', 'frown', 'neutral']))
        explanation = torch._dynamo.explain(model.encode_and_classify)(videos, text_features)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


def test_compile_mode_reaches_torch_compile_and_marks_cuda_graph_steps(monkeypatch):
    from utils import engine
    calls, steps = [], []
    monkeypatch.setattr(models, 'compile_encoders', lambda model, **options: calls.append(options) or model)
    monkeypatch.setattr(torch.compiler, 'cudagraph_mark_step_begin', lambda: steps.append(1))
    for mode, scope, budget, expected in (
            ('', 'methods', 1.0, {'scope': 'methods', 'memory_budget': 1.0}),
            ('reduce-overhead', 'blocks', 0.8,
             {'mode': 'reduce-overhead', 'scope': 'blocks', 'memory_budget': 0.8})):
        config = tiny_config(TRAIN__COMPILE=True, TRAIN__COMPILE_MODE=mode, TRAIN__COMPILE_SCOPE=scope,
                             TRAIN__COMPILE_MEMORY_BUDGET=budget)
        engine.build_model_for_run(config, torch.device('cpu'))
        assert calls.pop() == expected
        engine.mark_compiled_step(config)
    engine.mark_compiled_step(tiny_config(TRAIN__COMPILE=False, TRAIN__COMPILE_MODE='reduce-overhead'))
    assert steps == [1]  # only for compiled stacks with CUDA graphs
