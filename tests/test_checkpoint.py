"""Checkpoints: complete, weights_only-loadable, atomic, the release's files, and a failed resume names the file."""
import os
import random

import numpy as np
import pytest
import torch
import yaml
from timm.scheduler import CosineLRScheduler

from conftest import write_release_checkpoint
from utils import checkpoint as ckpt
from utils.config import config_for_checkpoint, get_default_config


def make_training_objects(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
    scheduler = CosineLRScheduler(optimizer, t_initial=20, warmup_t=3, warmup_lr_init=0, t_in_epochs=False)
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    return model, optimizer, scheduler, scaler


def train_steps(model, optimizer, scheduler, start_update, num_steps):
    for update in range(start_update, start_update + num_steps):
        inputs = torch.randn(5, 4)  # drawn from the global RNG: restored states must repeat it
        loss = model(inputs).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step_update(num_updates=update + 1)


def test_resuming_from_a_checkpoint_repeats_the_uninterrupted_run(tmp_path):
    model, optimizer, scheduler, scaler = make_training_objects()
    train_steps(model, optimizer, scheduler, 0, 4)
    config = get_default_config()
    results = {'best': {'epoch': 1, 'heads': {'global': {'UAR': 50.0, 'per_class_recall': [None, 1.5]}}}}
    path = str(tmp_path / 'last.pth')
    ckpt.save_checkpoint(ckpt.training_state(model, optimizer, scheduler, scaler, 2, 4, results, config), path)
    train_steps(model, optimizer, scheduler, 4, 3)  # the uninterrupted run goes on

    resumed = make_training_objects(seed=1)
    checkpoint = ckpt.load_checkpoint(path)  # weights_only=True inside
    epoch, step, restored_results = ckpt.restore_training_state(checkpoint, path, *resumed, updates_per_epoch=2)
    assert (epoch, step, restored_results) == (2, 4, results)
    assert yaml.safe_load(checkpoint['config'])['TRAIN']['LR'] == config.TRAIN.LR
    train_steps(resumed[0], resumed[1], resumed[2], 4, 3)
    for expected, actual in zip(model.state_dict().values(), resumed[0].state_dict().values()):
        assert torch.equal(expected, actual)
    assert resumed[1].param_groups[0]['lr'] == optimizer.param_groups[0]['lr']


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    state = ckpt.capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    torch.save(state, tmp_path / 'rng.pth')
    ckpt.restore_rng_state(torch.load(tmp_path / 'rng.pth', weights_only=True))
    assert random.random() == expected[0] and np.random.rand() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


def test_an_interrupted_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = str(tmp_path / 'last.pth')
    ckpt.save_checkpoint({'model': {'w': torch.ones(2)}, 'epoch': 1, 'step': 1}, path)

    def failing_save(obj, f):
        f.write(b'half a checkpoint')
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', failing_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({'model': {'w': torch.zeros(2)}, 'epoch': 2, 'step': 2}, path)
    assert os.listdir(tmp_path) == ['last.pth']
    assert torch.equal(ckpt.load_checkpoint(path)['model']['w'], torch.ones(2))


def test_a_failed_resume_raises_naming_the_file(tmp_path):
    model, optimizer, scheduler, scaler = make_training_objects()
    missing = str(tmp_path / 'missing.pth')
    with pytest.raises(ckpt.CheckpointError, match='missing.pth'):
        ckpt.load_checkpoint(missing)
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint')
    with pytest.raises(ckpt.CheckpointError, match='garbage.pth'):
        ckpt.load_checkpoint(str(garbage))
    model_only = str(tmp_path / 'model_only.pth')
    torch.save({'model': model.state_dict()}, model_only)
    with pytest.raises(ckpt.CheckpointError, match=r'model_only.pth cannot resume.*optimizer'):
        ckpt.restore_training_state(ckpt.load_checkpoint(model_only), model_only, model, optimizer, scheduler,
                                    scaler, updates_per_epoch=2)
    other_model = torch.nn.Sequential(torch.nn.Linear(4, 5))
    with pytest.raises(ckpt.CheckpointError, match='model_only.pth: the model weights do not fit'):
        ckpt.load_model_weights(other_model, ckpt.load_checkpoint(model_only), model_only)


def test_a_release_file_loads_safely_with_its_epoch_and_config(tmp_path):
    model, optimizer, scheduler, _ = make_training_objects()
    config = get_default_config()
    path = str(tmp_path / 'best.pth')
    write_release_checkpoint(path, model.state_dict(), 4, config, optimizer.state_dict(), scheduler.state_dict())
    checkpoint = ckpt.load_checkpoint(path)  # weights_only=True inside: only the allow-listed globals
    assert checkpoint['format'] == 'release' and checkpoint['epoch'] == 5  # 0-based epoch 4 finished
    assert checkpoint['max_accuracy'] == 42.5
    restored = config_for_checkpoint(checkpoint['config'])  # its extra key is skipped, the rest merged
    assert restored.dump() == config.dump()
    torch.testing.assert_close(ckpt.model_state_dict(checkpoint), model.state_dict(), rtol=0, atol=0)


def test_resuming_from_a_release_file_restores_weights_and_epoch_and_says_what_it_cannot(tmp_path, caplog):
    trained, optimizer, scheduler, _ = make_training_objects()
    train_steps(trained, optimizer, scheduler, 0, 4)
    path = str(tmp_path / 'best.pth')
    # the release's optimizer has its own parameter groups: two here, one in this run
    release_optimizer = torch.optim.AdamW([{'params': list(trained.parameters())[:2]},
                                           {'params': list(trained.parameters())[2:]}])
    write_release_checkpoint(path, trained.state_dict(), 1, get_default_config(), release_optimizer.state_dict())
    model, optimizer, scheduler, scaler = make_training_objects(seed=1)
    with caplog.at_level('WARNING'):
        epoch, step, results = ckpt.restore_training_state(ckpt.load_checkpoint(path), path, model, optimizer,
                                                           scheduler, scaler, updates_per_epoch=3)
    assert (epoch, step, results) == (2, 6, {})
    for expected, actual in zip(trained.state_dict().values(), model.state_dict().values()):
        assert torch.equal(expected, actual)
    fresh = make_training_objects()[2]
    fresh.step_update(num_updates=6)  # the schedule continues where 2 epochs of 3 updates end
    assert optimizer.param_groups[0]['lr'] == fresh.optimizer.param_groups[0]['lr']
    message = caplog.text
    assert 'best.pth' in message and 'optimizer' in message and 'scaler' in message and 'random' in message


def test_a_file_of_neither_format_is_refused_and_arbitrary_objects_are_not_unpickled(tmp_path):
    not_a_checkpoint = str(tmp_path / 'list.pth')
    torch.save([torch.ones(2)], not_a_checkpoint)
    with pytest.raises(ckpt.CheckpointError, match='list.pth is neither a checkpoint of this project nor'):
        ckpt.load_checkpoint(not_a_checkpoint)
    unsafe = str(tmp_path / 'unsafe.pth')
    torch.save({'model': {}, 'epoch': 1, 'config': random.Random(0)}, unsafe)  # a global nobody allowed
    with pytest.raises(ckpt.CheckpointError, match='cannot read checkpoint .*unsafe.pth'):
        ckpt.load_checkpoint(unsafe)
