"""Shared fixtures: tiny random CLIP weights in OpenAI's format and a tiny config built on the defaults.

Shared by every area's tests; add fixtures here with small edits (other test files depend on these).
"""
import numpy as np
import pytest
import torch
from yacs.config import CfgNode

import clip
from utils.config import get_default_config

# A CLIP small enough for 2-core CPU tests: width 64 (one head), 2 layers, 32 px images, patch 8.
TINY_DIMS = clip.CLIPDims(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=64,
                          vision_patch_size=8, transformer_width=64, transformer_layers=2)


def tiny_clip_state_dict(seed=0, dims=TINY_DIMS):
    """OpenAI-format state dict of a randomly initialised tiny CLIP (what a weights file would hold)."""
    torch.manual_seed(seed)
    return clip.build_from_dims(dims).state_dict()


def tiny_config(**overrides):
    """The project defaults shrunk to the tiny CLIP: custom arch, random init, T 8, S 4, 32 px, fp32.

    ``overrides`` are ``KEY=VALUE`` with dots written as double underscores, e.g. ``DATA__NUM_DIVIDE=2``.
    """
    config = get_default_config()
    config.defrost()
    config.MODEL.ARCH = 'custom'
    config.MODEL.RANDOM_INIT = True
    custom = config.MODEL.CUSTOM
    custom.EMBED_DIM, custom.IMAGE_RESOLUTION = TINY_DIMS.embed_dim, TINY_DIMS.image_resolution
    custom.VISION_LAYERS, custom.VISION_WIDTH = TINY_DIMS.vision_layers, TINY_DIMS.vision_width
    custom.VISION_PATCH_SIZE = TINY_DIMS.vision_patch_size
    custom.TEXT_LAYERS, custom.TEXT_WIDTH = TINY_DIMS.transformer_layers, TINY_DIMS.transformer_width
    config.DATA.INPUT_SIZE = TINY_DIMS.image_resolution
    config.DATA.NUM_FRAMES = 8
    config.DATA.NUM_DIVIDE = 4
    config.DATA.NUM_WORKERS = 0
    config.TRAIN.OPT_LEVEL = 'O0'
    config.TRAIN.BATCH_SIZE = 2
    config.TRAIN.ACCUMULATION_STEPS = 1
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split('__')
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    config.freeze()
    return config


def write_release_checkpoint(path, model_state, epoch, config, optimizer_state=None, scheduler_state=None):
    """A checkpoint file as the official release writes it: ``{model, optimizer, lr_scheduler,
    max_accuracy, epoch, config}`` with ``epoch`` the 0-based epoch just finished, ``config`` a pickled
    yacs ``CfgNode`` (here with one key this project lacks) and a NumPy best accuracy."""
    release_config = CfgNode(yaml_safe(config))
    release_config.MODEL.RELEASE_ONLY_OPTION = True
    release_config.freeze()
    torch.save({'model': model_state, 'optimizer': optimizer_state, 'lr_scheduler': scheduler_state,
                'max_accuracy': np.float64(42.5), 'epoch': epoch, 'config': release_config}, path)


def yaml_safe(config):
    """``config`` as nested plain dicts."""
    return {key: yaml_safe(value) if isinstance(value, CfgNode) else value for key, value in config.items()}


@pytest.fixture
def clip_state_dict():
    """A tiny random CLIP state dict (fresh per test)."""
    return tiny_clip_state_dict()


@pytest.fixture
def config():
    """The tiny config (frozen); use ``tiny_config(**overrides)`` for variants."""
    return tiny_config()
