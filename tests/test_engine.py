"""The training step (accumulation, precision, non-finite losses) and multi-view evaluation."""
import logging

import pytest
import torch

from conftest import tiny_clip_state_dict, tiny_config
from models.builder import build_model, class_prompt_tokens
from models.loss import DKCLIPLoss, build_criterion
from utils.engine import (Trainer, build_grad_scaler, evaluate, normalize_videos, predict, resolve_amp_dtype,
                          shuffle_frames, train_one_epoch)
from utils.optimizer import build_param_groups, build_scheduler

CPU = torch.device('cpu')
NUM_FRAMES, SIZE = 8, 32


def random_batch(generator, batch_size, num_views=None, start_index=0):
    views = () if num_views is None else (num_views,)
    videos = torch.randint(0, 256, (batch_size, *views, NUM_FRAMES, 3, SIZE, SIZE), generator=generator,
                           dtype=torch.uint8)
    return {'videos': videos, 'labels': torch.randint(0, 7, (batch_size,), generator=generator),
            'indices': torch.arange(start_index, start_index + batch_size)}


def concatenate(*batches):
    return {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}


def make_trainer(accumulation_steps, amp_dtype=None, criterion=None, **overrides):
    """A tiny DK-CLIP with SGD (its update is linear in the gradient, so gradient errors show)."""
    settings = dict(TRAIN__ACCUMULATION_STEPS=accumulation_steps, TRAIN__WARMUP_EPOCHS=0, TRAIN__LR=0.05,
                    AUG__MIXUP=0.0, PRINT_FREQ=1)
    config = tiny_config(**{**settings, **overrides})
    model = build_model(config, tiny_clip_state_dict(seed=3))
    optimizer = torch.optim.SGD(build_param_groups(model, config))
    scheduler = build_scheduler(config, optimizer, updates_per_epoch=4)
    text_tokens, _ = class_prompt_tokens(config, CPU)
    return Trainer(config=config, model=model, criterion=criterion or build_criterion(config),
                   optimizer=optimizer, scheduler=scheduler, scaler=build_grad_scaler(CPU, amp_dtype),
                   text_tokens=text_tokens, device=CPU, amp_dtype=amp_dtype)


def trained_parameters(trainer, loader):
    train_one_epoch(trainer, loader, epoch=0)
    return {name: parameter.detach().clone() for name, parameter in trainer.model.named_parameters()}


def assert_same_update(first, second, initial):
    moved = max((first[name] - initial[name]).abs().max().item() for name in first)
    assert moved > 1e-3  # the update did something
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-4, atol=2e-5, msg=name)


def test_accumulating_two_batches_equals_one_double_batch():
    generator = torch.Generator().manual_seed(0)
    first, second = random_batch(generator, 2), random_batch(generator, 2)
    accumulating = make_trainer(accumulation_steps=2)
    initial = {name: p.detach().clone() for name, p in accumulating.model.named_parameters()}
    accumulated = trained_parameters(accumulating, [first, second])
    single = trained_parameters(make_trainer(accumulation_steps=1), [concatenate(first, second)])
    assert accumulating.num_updates == 1
    assert_same_update(accumulated, single, initial)


def test_a_trailing_partial_accumulation_updates_with_its_own_mean_when_asked():
    generator = torch.Generator().manual_seed(1)
    batches = [random_batch(generator, 2) for _ in range(3)]
    accumulating = make_trainer(accumulation_steps=2, TRAIN__TRAILING_MICRO_BATCHES='update')
    initial = {name: p.detach().clone() for name, p in accumulating.model.named_parameters()}
    accumulated = trained_parameters(accumulating, batches)
    reference = make_trainer(accumulation_steps=1)
    expected = trained_parameters(reference, [concatenate(batches[0], batches[1]), batches[2]])
    assert accumulating.num_updates == reference.num_updates == 2
    assert_same_update(accumulated, expected, initial)


def test_a_trailing_partial_accumulation_is_dropped_by_default_as_the_release_did():
    generator = torch.Generator().manual_seed(1)
    batches = [random_batch(generator, 2) for _ in range(3)]
    accumulating = make_trainer(accumulation_steps=2)
    initial = {name: p.detach().clone() for name, p in accumulating.model.named_parameters()}
    accumulated = trained_parameters(accumulating, batches)
    reference = make_trainer(accumulation_steps=1)
    expected = trained_parameters(reference, [concatenate(batches[0], batches[1])])
    assert accumulating.num_updates == reference.num_updates == 1
    assert_same_update(accumulated, expected, initial)
    assert all(parameter.grad is None for parameter in accumulating.model.parameters())  # nothing carried over


class RelevanceEntropyLoss(DKCLIPLoss):
    """The example of docs/model.md, section 12: a term on the relevance, which the engine passes by name."""

    def forward(self, targets, epoch, *, relevance, **outputs):
        loss, parts = super().forward(targets, epoch, relevance=relevance, **outputs)
        entropy = -(relevance * relevance.clamp_min(1e-8).log()).sum(dim=1).mean()
        return loss + 0.5 * entropy, {**parts, 'loss_entropy': entropy.detach()}


def test_a_loss_term_on_the_relevance_needs_no_change_to_the_engine():
    generator = torch.Generator().manual_seed(6)
    batches = [random_batch(generator, 2) for _ in range(2)]
    config = tiny_config()
    plain, with_entropy = make_trainer(1), make_trainer(1, criterion=RelevanceEntropyLoss(
        config.LOSS.CONSISTENCY, config.LOSS.LAMBDA, config.TRAIN.CONSISTENCY_EPOCHS, config.AUG.LABEL_SMOOTH))
    losses = train_one_epoch(with_entropy, batches, epoch=0)
    assert losses['loss_entropy'] > 0  # logged under its name, like the built-in parts
    trained = {name: p.detach() for name, p in with_entropy.model.named_parameters()}
    reference = trained_parameters(plain, batches)
    assert any(not torch.equal(trained[name], reference[name]) for name in reference)  # the term trained


def test_a_non_finite_loss_stops_the_run_naming_epoch_and_step():
    real_criterion = build_criterion(tiny_config())
    calls = []

    def criterion(targets, epoch, **outputs):
        loss, parts = real_criterion(targets, epoch, **outputs)
        calls.append(1)
        return (loss * float('nan') if len(calls) == 3 else loss), parts

    trainer = make_trainer(accumulation_steps=1, criterion=criterion, PRINT_FREQ=100)
    generator = torch.Generator().manual_seed(2)
    with pytest.raises(FloatingPointError, match=r'epoch 4, step 3/5'):
        train_one_epoch(trainer, [random_batch(generator, 1) for _ in range(5)], epoch=4)


def test_o1_falls_back_to_bf16_on_the_cpu_and_trains(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_amp_dtype('O1', CPU) == torch.bfloat16
    assert 'needs CUDA' in caplog.text
    assert resolve_amp_dtype('O0', CPU) is None and resolve_amp_dtype('bf16', CPU) == torch.bfloat16
    assert resolve_amp_dtype('O1', torch.device('cuda', 0)) == torch.float16
    assert build_grad_scaler(CPU, torch.float16).is_enabled()
    assert not build_grad_scaler(CPU, torch.bfloat16).is_enabled()
    trainer = make_trainer(accumulation_steps=1, amp_dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(3)
    losses = train_one_epoch(trainer, [random_batch(generator, 2) for _ in range(2)], epoch=0)
    assert all(torch.isfinite(torch.tensor(value)) for value in losses.values())


def test_shuffle_frames_permutes_each_clip():
    videos = torch.arange(3 * 6).reshape(3, 6, 1) * torch.ones(1, 1, 2)
    shuffled = shuffle_frames(videos, torch.Generator().manual_seed(0))
    for clip, original in zip(shuffled, videos):
        assert sorted(clip[:, 0].tolist()) == original[:, 0].tolist()
    assert not torch.equal(shuffled, videos)


def test_multi_view_evaluation_sums_the_views_of_each_video():
    config = tiny_config(TEST__NUM_CLIP=2)
    model = build_model(config, tiny_clip_state_dict(seed=4)).eval()
    text_tokens, _ = class_prompt_tokens(config, CPU)
    generator = torch.Generator().manual_seed(5)
    loader = [random_batch(generator, 2, num_views=2), random_batch(generator, 1, num_views=2, start_index=2)]
    evaluation = evaluate(model, loader, text_tokens, config, CPU, amp_dtype=None)
    assert evaluation.indices.tolist() == [0, 1, 2]
    videos = torch.cat([batch['videos'] for batch in loader])  # [3, V, T, 3, H, W]
    with torch.no_grad():
        for video in range(3):
            logits_global, logits_local, _ = model(normalize_videos(videos[video], config), text_tokens)
            expected_global = logits_global.softmax(-1).sum(0)  # views of one video as a batch
            expected_local = logits_local.sum(1).softmax(-1).sum(0)
            torch.testing.assert_close(evaluation.scores['global'][video], expected_global, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(evaluation.scores['fused'][video], expected_global + expected_local,
                                       rtol=1e-4, atol=1e-5)
    predictions = evaluation.scores['global'].argmax(1)
    labels = torch.cat([batch['labels'] for batch in loader])
    assert evaluation.heads['global']['WAR'] == pytest.approx(100 * (predictions == labels).float().mean().item())


def test_a_process_without_videos_still_gathers_every_head():
    # more processes than test videos: the empty share must offer the same names to the gather
    config = tiny_config()
    model = build_model(config, tiny_clip_state_dict(seed=4)).eval()
    text_tokens, _ = class_prompt_tokens(config, CPU)
    collected = predict(model, [], text_tokens, config, CPU, amp_dtype=None)
    assert set(collected) == {'labels', 'indices', 'global', 'local', 'fused'}
    assert collected['global'].shape == (0, 7) and collected['labels'].dtype == torch.long
