"""``TRAIN.COMPILE``: the compiled model keeps its state-dict names, and trains and evaluates like eager.

Most tests compile with the ``aot_eager`` backend (graph capture and AOTAutograd's forward/backward split,
without generating kernels) or with a counting backend that runs the captured graph as it is; the
inductor test generates and builds C++ kernels. Capturing the graphs takes 10-20 s a test on 2 cores, so
all but the state-dict test are marked slow.
"""
import pytest
import torch

import clip
from conftest import tiny_clip_state_dict, tiny_config
from models.builder import build_model, build_model_for_run
from models.loss import build_criterion
from utils.engine import mark_compiled_step

PROMPTS = ['smile', 'frown', 'neutral']


def build(**overrides):
    config = tiny_config(**overrides)
    torch.manual_seed(0)
    return build_model(config, tiny_clip_state_dict()), build_criterion(config)


def random_videos(batch, seed=1, device='cpu'):
    return torch.randn(batch, 8, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).to(device)


def train_step(model, criterion, batch=2, device='cpu'):
    """One forward and backward on fixed inputs; returns copies of the outputs and the gradients (a CUDA
    graph's outputs are overwritten by its next replay)."""
    model.train()
    model.zero_grad()
    logits_global, logits_local, features = model(random_videos(batch, device=device),
                                                  clip.tokenize(PROMPTS).to(device))
    labels = torch.arange(batch, device=device) % len(PROMPTS)
    criterion(labels, 0, logits_global=logits_global, logits_local=logits_local)[0].backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return [output.detach().clone() for output in (logits_global, logits_local, features)], grads


def evaluate(model, batch, device='cpu', **kwargs):
    model.eval()
    with torch.no_grad():
        return model(random_videos(batch, seed=2, device=device), clip.tokenize(PROMPTS).to(device), **kwargs)


def assert_same_step(actual, expected):
    # inductor fuses and reorders reductions (softmax, LayerNorm), so fp32 results differ in the last
    # few bits: the tolerance allows that and nothing more.
    (outputs, grads), (expected_outputs, expected_grads) = actual, expected
    for output, expected_output in zip(outputs, expected_outputs):
        torch.testing.assert_close(output, expected_output, rtol=1e-4, atol=1e-4)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-3, atol=1e-5, msg=name)


def assert_compiled_equals_eager(backend, **overrides):
    torch.compiler.reset()
    eager, criterion = build(**overrides)
    compiled, _ = build(**overrides)
    names = list(compiled.state_dict())
    compiled.compile(backend=backend)
    assert list(compiled.state_dict()) == names  # checkpoints load either way
    expected = train_step(eager, criterion)
    for _ in range(2):  # the second step runs the cached graphs
        assert_same_step(train_step(compiled, criterion), expected)
    torch.testing.assert_close(evaluate(compiled, 3)[0], evaluate(eager, 3)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_model_keeps_names_outputs_and_gradients():
    # activation checkpointing and a trainable text tower: the two paths compilation could break
    assert_compiled_equals_eager('aot_eager', TRAIN__USE_CHECKPOINT=True, MODEL__FIX_TEXT=False)


@pytest.mark.slow
def test_inductor_compiled_model_matches_eager():
    assert_compiled_equals_eager('inductor', MODEL__FIX_TEXT=False)


@pytest.mark.slow
def test_a_run_stays_compiled_in_one_graph_per_call():
    """Training with a short last batch, evaluation with one, the detailed outputs, then a second model:
    every call runs a compiled graph (none falls back to eager past dynamo's recompile limit), the whole
    forward pass is one graph (no graph break: with CUDA graphs, what runs between graphs is launched from
    Python kernel by kernel), and the results are eager's."""
    torch.compiler.reset()
    graph_calls = []

    def counting_backend(graph_module, example_inputs):
        def run(*args):
            graph_calls.append(1)
            return graph_module.forward(*args)
        return run

    for _ in range(2):  # a second model reuses the first one's graphs
        eager, criterion = build()
        compiled, _ = build()
        compiled.compile(backend=counting_backend, fullgraph=True)
        for batch in (2, 2, 1, 3):  # full batches, a last batch of 1, another batch size
            calls = len(graph_calls)
            assert_same_step(train_step(compiled, criterion, batch), train_step(eager, criterion, batch))
            assert len(graph_calls) == calls + 1
        for batch in (6, 1):
            calls = len(graph_calls)
            torch.testing.assert_close(evaluate(compiled, batch)[0], evaluate(eager, batch)[0])
            assert len(graph_calls) == calls + 1
        details = evaluate(compiled, 2, return_details=True)
        torch.testing.assert_close(details['relevance'], evaluate(eager, 2, return_details=True)['relevance'])


def test_compiled_model_saves_plain_names():
    model = build_model_for_run(tiny_config(TRAIN__COMPILE=True), torch.device('cpu'))
    names = list(model.state_dict())
    assert names == list(build()[0].state_dict()) and not any('_orig_mod' in name for name in names)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_graphs_train_and_evaluate_like_eager():
    """``TRAIN.COMPILE_MODE reduce-overhead``: train one compiled model 3 steps, evaluate it, then evaluate
    a second, fresh compiled model in the same process; every output and gradient as in eager mode."""
    torch.compiler.reset()
    config, device = tiny_config(TRAIN__COMPILE=True, TRAIN__COMPILE_MODE='reduce-overhead'), 'cuda'
    eager, criterion = build()
    eager.to(device)
    expected = train_step(eager, criterion, device=device)
    expected_logits = evaluate(eager, 3, device=device)[0]
    for trains in (True, False):  # the second model is only evaluated, after the first one's graphs
        compiled, _ = build()
        compiled.to(device).compile(mode='reduce-overhead')
        for _ in range(3 if trains else 0):  # CUDA graphs: warm-up, recording, replay
            mark_compiled_step(config)
            assert_same_step(train_step(compiled, criterion, device=device), expected)
        for _ in range(3):
            mark_compiled_step(config)
            logits = evaluate(compiled, 3, device=device)[0].clone()
            torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
