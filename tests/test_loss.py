"""The training objective (docs/model.md, "Objective") on hand-computed small tensors."""
import math

import pytest
import torch

from conftest import tiny_config
from models.loss import DKCLIPLoss, build_criterion, kl_consistency


def log_softmax(values):
    log_total = math.log(sum(math.exp(v) for v in values))
    return [v - log_total for v in values]


def softmax(values):
    return [math.exp(v) for v in log_softmax(values)]


def hand_loss(logits_global, logits_local, label, variant, weight):
    """One sample: CE(g) + weight * (CE(l_sum) + consistency), by the formulas of docs/model.md,
    "Objective"."""
    local_sum = [sum(column) for column in zip(*logits_local)]
    ce_global = -log_softmax(logits_global)[label]
    ce_local = -log_softmax(local_sum)[label]
    p_global = softmax(logits_global)
    if variant == 'official':  # probabilities fed where logits belong
        consistency = -sum(p * q for p, q in zip(p_global, log_softmax(softmax(local_sum))))
    else:  # KL(p_global || p_local)
        consistency = sum(p * (math.log(p) - q) for p, q in zip(p_global, log_softmax(local_sum)))
    return ce_global + weight * (ce_local + consistency), (ce_global, ce_local, consistency)


G = [[2.0, 0.0, -1.0], [0.5, 1.5, -0.5]]
L = [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.2, -0.3, 1.0], [0.4, 0.1, -0.2]]]
Y = [0, 2]


@pytest.mark.parametrize('variant', ['official', 'kl'])
def test_loss_matches_the_hand_computed_value(variant):
    criterion = DKCLIPLoss(variant, weight=0.5, consistency_epochs=14, label_smoothing=0.0)
    loss, parts = criterion(torch.tensor(Y), 3, logits_global=torch.tensor(G), logits_local=torch.tensor(L),
                            video_features=torch.zeros(2, 4))  # outputs no term uses are accepted
    per_sample = [hand_loss(g, l, y, variant, 0.5) for g, l, y in zip(G, L, Y)]
    assert loss.item() == pytest.approx(sum(total for total, _ in per_sample) / 2, rel=1e-6)
    for index, key in enumerate(('loss_global', 'loss_local', 'loss_consistency')):
        assert parts[key].item() == pytest.approx(sum(p[1][index] for p in per_sample) / 2, rel=1e-6)
        assert parts[key].dim() == 0 and not parts[key].requires_grad


def test_first_sample_by_hand():
    # g = (2, 0, -1), l_sum = (1, 1, 0), label 0: CE(g) = log(e^2 + 1 + 1/e) - 2, CE(l_sum) = log(2e + 1) - 1
    criterion = DKCLIPLoss('official', weight=1.0, consistency_epochs=14, label_smoothing=0.0)
    _, parts = criterion(torch.tensor([0]), 0, logits_global=torch.tensor(G[:1]),
                         logits_local=torch.tensor(L[:1]))
    assert parts['loss_global'].item() == pytest.approx(math.log(math.e ** 2 + 1 + 1 / math.e) - 2)
    assert parts['loss_local'].item() == pytest.approx(math.log(2 * math.e + 1) - 1)


def test_official_consistency_sends_gradient_into_the_global_head_and_kl_does_not():
    logits_global = torch.tensor(G, requires_grad=True)
    for variant, flows in (('official', True), ('kl', False)):
        criterion = DKCLIPLoss(variant, weight=1.0, consistency_epochs=14, label_smoothing=0.0)
        local_sum = torch.tensor(L).sum(dim=1).requires_grad_()
        consistency = criterion.consistency(local_sum, logits_global)
        grad_global, grad_local = torch.autograd.grad(consistency, [logits_global, local_sum],
                                                      allow_unused=True)
        assert grad_local.abs().sum() > 0
        assert (grad_global is not None and grad_global.abs().sum() > 0) == flows, variant


def test_local_terms_stop_after_the_consistency_epochs():
    config = tiny_config(TRAIN__CONSISTENCY_EPOCHS=14, AUG__LABEL_SMOOTH=0.0, LOSS__LAMBDA=1.0)
    criterion = build_criterion(config)
    g, l, y = torch.tensor(G), torch.tensor(L), torch.tensor(Y)
    before, parts_before = criterion(y, 13, logits_global=g, logits_local=l)
    after, parts_after = criterion(y, 14, logits_global=g, logits_local=l)
    without_local, _ = criterion(y, 0, logits_global=g, logits_local=None)
    assert parts_before['loss_local'] > 0 and parts_before['loss_consistency'] > 0
    assert before > after
    torch.testing.assert_close(after, parts_before['loss_global'])
    torch.testing.assert_close(without_local, after)
    assert parts_after['loss_local'] == 0 and parts_after['loss_consistency'] == 0


@pytest.mark.parametrize('variant', ['official', 'kl'])
def test_any_batch_size_including_a_short_last_batch(variant):
    generator = torch.Generator().manual_seed(0)
    g, l = torch.randn(5, 4, generator=generator), torch.randn(5, 3, 4, generator=generator)
    y = torch.tensor([0, 3, 1, 1, 2])
    criterion = DKCLIPLoss(variant, weight=1.0, consistency_epochs=14, label_smoothing=0.1)
    full, _ = criterion(y, 0, logits_global=g, logits_local=l)
    singles = [criterion(y[i:i + 1], 0, logits_global=g[i:i + 1], logits_local=l[i:i + 1])[0]
               for i in range(5)]
    torch.testing.assert_close(full, torch.stack(singles).mean())  # every term is a batch mean
    short, _ = criterion(y[:1], 0, logits_global=g[:1], logits_local=l[:1])  # a last batch of one video
    assert torch.isfinite(short)


def test_hard_targets_with_smoothing_equal_the_smoothed_soft_targets():
    criterion = DKCLIPLoss('official', weight=1.0, consistency_epochs=14, label_smoothing=0.1)
    g, l, y = torch.tensor(G), torch.tensor(L), torch.tensor(Y)
    # smoothing 0.1 over K = 3 classes: 0.9 + 0.1 / 3 on the label, 0.1 / 3 elsewhere
    soft = torch.full((2, 3), 0.1 / 3)
    soft[torch.arange(2), y] = 0.9 + 0.1 / 3
    hard_loss, _ = criterion(y, 0, logits_global=g, logits_local=l)
    soft_loss, _ = criterion(soft, 0, logits_global=g, logits_local=l)
    torch.testing.assert_close(hard_loss, soft_loss)
    unsmoothed = DKCLIPLoss('official', weight=1.0, consistency_epochs=14, label_smoothing=0.0)
    assert not torch.allclose(unsmoothed(y, 0, logits_global=g, logits_local=l)[0], hard_loss)
    one_hot = torch.nn.functional.one_hot(y, 3).float()
    torch.testing.assert_close(unsmoothed(one_hot, 0, logits_global=g, logits_local=l)[0],
                               unsmoothed(y, 0, logits_global=g, logits_local=l)[0])


def test_build_criterion_reads_the_config():
    criterion = build_criterion(tiny_config(LOSS__CONSISTENCY='kl', LOSS__LAMBDA=0.25,
                                                   TRAIN__CONSISTENCY_EPOCHS=3, AUG__LABEL_SMOOTH=0.2))
    assert criterion.weight == 0.25 and criterion.consistency_epochs == 3
    assert criterion.label_smoothing == 0.2 and criterion.consistency is kl_consistency
