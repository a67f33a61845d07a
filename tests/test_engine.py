"""The training step (accumulation, precision, non-finite losses) and multi-view evaluation."""
import logging

import pytest
import torch

from conftest import tiny_clip_state_dict, tiny_config
from models.builder import build_model, class_prompt_tokens
from models.loss import build_criterion
from utils.engine import (Trainer, build_grad_scaler, evaluate, normalize_videos, resolve_amp_dtype,
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


def test_a_trailing_partial_accumulation_updates_with_its_own_mean():
    generator = torch.Generator().manual_seed(1)
    batches = [random_batch(generator, 2) for _ in range(3)]
    accumulating = make_trainer(accumulation_steps=2)
    initial = {name: p.detach().clone() for name, p in accumulating.model.named_parameters()}
    accumulated = trained_parameters(accumulating, batches)
    reference = make_trainer(accumulation_steps=1)
    expected = trained_parameters(reference, [concatenate(batches[0], batches[1]), batches[2]])
    assert accumulating.num_updates == reference.num_updates == 2
    assert_same_update(accumulated, expected, initial)


def test_a_non_finite_loss_stops_the_run_naming_epoch_and_step():
    real_criterion = build_criterion(tiny_config())
    calls = []

    def criterion(logits_global, logits_local, targets, epoch):
        loss, parts = real_criterion(logits_global, logits_local, targets, epoch)
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
    evaluation = evaluate(model, loader, text_tokens, config, CPU)
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
