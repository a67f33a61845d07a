"""Building DK-CLIP from the config: CLIP weights (file, cache or random) and the composed model."""
import logging
from dataclasses import replace

from timm.layers import resample_abs_pos_embed

import clip
from clip.model import KNOWN_DIMS, NON_PARAMETER_KEYS, CLIPDims, clip_dims_from_state_dict
from utils.checkpoint import model_state_dict
from utils.config import ConfigError
from utils.labels import read_label_csv
from utils.reporting import class_names_from_prompts

from .dkclip import DKCLIP

logger = logging.getLogger(__name__)

# Parameters DK-CLIP adds to CLIP (initialised, docs/model.md "Initialisation", instead of loaded).
NEW_PARAMETER_PREFIXES = ('visual_semantic.', 'msim.', 'prompts_')


def _custom_dims(config):
    custom = config.MODEL.CUSTOM
    return CLIPDims(embed_dim=custom.EMBED_DIM, image_resolution=custom.IMAGE_RESOLUTION,
                    vision_layers=custom.VISION_LAYERS, vision_width=custom.VISION_WIDTH,
                    vision_patch_size=custom.VISION_PATCH_SIZE, transformer_width=custom.TEXT_WIDTH,
                    transformer_layers=custom.TEXT_LAYERS)


def random_clip_state_dict(config):
    """A randomly initialised CLIP of ``MODEL.ARCH`` (``MODEL.CUSTOM.*`` for 'custom'), OpenAI format."""
    arch = config.MODEL.ARCH
    if arch == 'custom':
        dims = _custom_dims(config)
    elif arch in KNOWN_DIMS:
        dims = KNOWN_DIMS[arch]
    else:
        raise ConfigError(f"MODEL.ARCH = {arch!r}: random weights need one of {list(KNOWN_DIMS)} or "
                          f"'custom' (dimensions in MODEL.CUSTOM)")
    logger.warning('MODEL.RANDOM_INIT: starting from random CLIP weights (%s); for demos and tests only',
                   arch)
    return clip.build_from_dims(dims).state_dict()


def _read_weights(path, key):
    try:
        return clip.load_state_dict(path)
    except (OSError, ValueError) as error:
        raise ConfigError(f'{key} = {path!r}: {error}') from error


def load_clip_state_dict(config):
    """CLIP weights for the model, in OpenAI's format.

    In order: the file ``MODEL.PRETRAINED``; random weights when ``MODEL.RANDOM_INIT`` (checked before
    the cache so that the result does not depend on what the cache folder holds); the weights of
    ``MODEL.ARCH`` in the CLIP cache folder (``$CLIP_CACHE``, default ~/.cache/clip).

    Raises:
        ConfigError: naming the keys to set and the file to provide when no weights are found.
    """
    model_config = config.MODEL
    if model_config.PRETRAINED:
        if model_config.RANDOM_INIT:
            logger.warning('MODEL.RANDOM_INIT is ignored: MODEL.PRETRAINED = %s is loaded',
                           model_config.PRETRAINED)
        return _read_weights(model_config.PRETRAINED, 'MODEL.PRETRAINED')
    if model_config.RANDOM_INIT:
        return random_clip_state_dict(config)
    if model_config.ARCH == 'custom':
        raise ConfigError("MODEL.ARCH = 'custom' has no published weights: set MODEL.PRETRAINED to a "
                          "CLIP weights file, or MODEL.RANDOM_INIT: True for random weights")
    try:
        path = clip.resolve_model_path(model_config.ARCH)
    except FileNotFoundError as error:
        raise ConfigError(f'MODEL.ARCH = {model_config.ARCH!r} and MODEL.PRETRAINED is empty: {error} '
                          f'Or set MODEL.PRETRAINED to the weights file (MODEL.RANDOM_INIT: True gives '
                          f'random weights for a demo).') from error
    return _read_weights(path, 'MODEL.ARCH')


def model_settings(config):
    """The :class:`DKCLIP` arguments that come from the config (besides the CLIP dimensions)."""
    return dict(num_frames=config.DATA.NUM_FRAMES, num_snippets=config.DATA.NUM_DIVIDE,
                prompt_layers=config.MODEL.PROMPT_LAYERS, prompt_alpha=config.MODEL.PROMPT_ALPHA,
                msim_layers=config.MODEL.MSIM_LAYERS, erase_threshold=config.MODEL.ERASE_THRESHOLD,
                use_local=config.MODEL.USE_LOCAL, fix_text=config.MODEL.FIX_TEXT,
                drop_path_rate=config.MODEL.DROP_PATH_RATE, use_checkpoint=config.TRAIN.USE_CHECKPOINT,
                msim_pos_init_std=config.MODEL.MSIM_POS_INIT_STD, head_precision=config.MODEL.HEAD_PRECISION)


def _check_input_size(config, dims):
    input_size = config.DATA.INPUT_SIZE
    if input_size % dims.vision_patch_size:
        raise ConfigError(f'DATA.INPUT_SIZE = {input_size}: must be a multiple of the CLIP patch size '
                          f'{dims.vision_patch_size}')
    if input_size != dims.image_resolution:
        logger.warning('DATA.INPUT_SIZE = %d differs from the CLIP resolution %d: the positional '
                       'embedding of visual is resampled (bicubic)', input_size, dims.image_resolution)
    return replace(dims, image_resolution=input_size)


def clip_dims_for_input(config, clip_state_dict):
    """The dimensions of the CLIP in ``clip_state_dict`` with its image resolution set to
    ``DATA.INPUT_SIZE`` (a multiple of the patch size; the positional embedding is resampled when the two
    differ, :func:`fit_positional_embedding`).

    Raises:
        ConfigError: ``DATA.INPUT_SIZE`` is not a multiple of the patch size.
        ValueError: the weights are not a CLIP ViT state dict.
    """
    return _check_input_size(config, clip_dims_from_state_dict(clip_state_dict))


def fit_positional_embedding(clip_state_dict, num_positions):
    """CLIP's weights without the non-parameter entries, ``visual.positional_embedding`` resampled
    (bicubic) to ``num_positions`` (class token + patch grid) when it has another length."""
    state_dict = {k: v for k, v in clip_state_dict.items() if k not in NON_PARAMETER_KEYS}
    key = 'visual.positional_embedding'
    if state_dict[key].shape[0] != num_positions:
        grid = round((num_positions - 1) ** 0.5)
        resampled = resample_abs_pos_embed(state_dict[key][None].float(), new_size=[grid, grid],
                                           num_prefix_tokens=1)
        state_dict[key] = resampled[0]
    return state_dict


def _is_new_parameter(name):
    return name.startswith(NEW_PARAMETER_PREFIXES) or '.message_' in name


def load_clip_weights(model, clip_state_dict):
    """Copy CLIP's weights into ``model`` (``visual.*`` and the text encoder), resampling
    ``visual.positional_embedding`` to the model's patch grid if they differ.

    Raises:
        ValueError: the state dict has entries DK-CLIP lacks, or lacks CLIP entries.
    """
    state_dict = fit_positional_embedding(clip_state_dict, model.visual.positional_embedding.shape[0])
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    lacking = [name for name in missing if not _is_new_parameter(name)]
    if unexpected or lacking:
        raise ValueError(f'CLIP weights do not fit DK-CLIP: unexpected entries {unexpected[:5]}, '
                         f'missing entries {lacking[:5]}')
    logger.info('loaded %d CLIP tensors; %d new DK-CLIP tensors initialised', len(state_dict),
                len(missing))
    return model


def build_model(config, clip_state_dict):
    """DK-CLIP (fp32, CPU, training mode) with OpenAI-format CLIP weights copied in and the new parts
    initialised (docs/model.md, section 14); ConfigError for an input size that is not a multiple of the
    patch size, ValueError for weights that are not a CLIP ViT."""
    dims = clip_dims_for_input(config, clip_state_dict)
    model = DKCLIP(dims, **model_settings(config))
    return load_clip_weights(model, clip_state_dict)


def build_model_for_run(config, device, checkpoint=None):
    """DK-CLIP on ``device`` from the CLIP weights the config names, or shaped by a DK-CLIP
    ``checkpoint`` (which the caller then loads strictly), compiled in place with ``TRAIN.COMPILE``
    (``nn.Module.compile`` keeps the state-dict names)."""
    if checkpoint is None:
        clip_state_dict = load_clip_state_dict(config)
    else:
        clip_state_dict = model_state_dict(checkpoint)
    model = build_model(config, clip_state_dict).to(device)
    if config.TRAIN.COMPILE:
        model.compile(mode=config.TRAIN.COMPILE_MODE or None)  # '' = torch's default mode
    return model


def class_prompt_tokens(config, device):
    """Tokenised class prompts ``[K, 77]`` of ``DATA.LABEL_LIST`` on ``device``, and short class names."""
    prompts = read_label_csv(config.DATA.LABEL_LIST)
    return clip.tokenize(prompts).to(device), class_names_from_prompts(prompts)
