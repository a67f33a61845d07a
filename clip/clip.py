"""Loading CLIP weights from local files: OpenAI JIT archives, plain state dicts, or known model names.

Nothing is downloaded at run time. A known name (``ViT-B/16`` ...) resolves to a file in the CLIP
cache folder (``$CLIP_CACHE``, default ``~/.cache/clip``); :func:`download` fetches one explicitly,
with its SHA256 checked.
"""
import hashlib
import os
import urllib.request
import warnings
import zipfile

import torch
from torchvision import transforms

from utils.errors import InputFileError, UserError

from .model import NON_PARAMETER_KEYS, build_model

_BASE_URL = 'https://openaipublic.azureedge.net/clip/models'
# name -> (SHA256 of the file, file name); OpenAI's release URLs are f'{_BASE_URL}/{sha256}/{file}'.
_MODELS = {
    'ViT-B/32': ('40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af', 'ViT-B-32.pt'),
    'ViT-B/16': ('5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f', 'ViT-B-16.pt'),
    'ViT-L/14': ('b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836', 'ViT-L-14.pt'),
    'ViT-L/14@336px': ('3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02',
                       'ViT-L-14-336px.pt'),
}
# CLIP's own image statistics (0..1 scale).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def available_models():
    """Names of the OpenAI CLIP models this package knows."""
    return list(_MODELS)


def cache_dir():
    """The folder where known models are looked for: ``$CLIP_CACHE`` or ``~/.cache/clip``."""
    return os.path.expanduser(os.environ.get('CLIP_CACHE', '~/.cache/clip'))


class CLIPWeightsError(UserError, ValueError):
    """A weights file cannot be read as CLIP weights; the message names it."""


def _missing_model_message(name, path):
    sha256, filename = _MODELS[name]
    return (f'CLIP weights for {name} not found at {path}. Put OpenAI\'s {filename} there '
            f'(SHA256 {sha256}, from {_BASE_URL}/{sha256}/{filename}), set $CLIP_CACHE to the folder '
            f'that holds it, pass the file path instead of the name, or call '
            f'clip.download({name!r}) once.')


def resolve_model_path(name_or_path):
    """Return the weight file for a known model name or a file path.

    Raises:
        InputFileError: naming the file to put where (and its SHA256) for a known name.
    """
    if name_or_path in _MODELS:
        path = os.path.join(cache_dir(), _MODELS[name_or_path][1])
        if not os.path.isfile(path):
            raise InputFileError(_missing_model_message(name_or_path, path))
        return path
    if os.path.isfile(name_or_path):
        return name_or_path
    raise InputFileError(f'CLIP weights not found: {name_or_path!r} is neither a file nor one of '
                         f'{available_models()}')


def download(name, root=None):
    """Explicitly download a known model into the cache folder, verifying its SHA256."""
    sha256, filename = _MODELS[name]
    root = root or cache_dir()
    os.makedirs(root, exist_ok=True)
    target = os.path.join(root, filename)
    if os.path.isfile(target) and _sha256(target) == sha256:
        return target
    partial = target + '.part'
    urllib.request.urlretrieve(f'{_BASE_URL}/{sha256}/{filename}', partial)
    if _sha256(partial) != sha256:
        os.remove(partial)
        raise RuntimeError(f'downloaded {filename} does not match its SHA256 {sha256}')
    os.replace(partial, target)
    return target


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _is_torchscript_archive(path):
    # A TorchScript archive is a zip file with a code/ folder; a torch.save file has none.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any('/code/' in name or name.startswith('code/') for name in archive.namelist())


def load_state_dict(path):
    """Read a CLIP state dict from an OpenAI JIT archive or a plain (``weights_only``-safe) file.

    Accepts a bare state dict or one wrapped under ``state_dict`` / ``model``, with or without a
    ``module.`` prefix. The non-parameter entries of OpenAI's files are removed.

    Raises:
        CLIPWeightsError: the file cannot be read as CLIP weights; the message names it.
    """
    try:
        if _is_torchscript_archive(path):
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is OpenAI's format
                warnings.simplefilter('ignore', FutureWarning)
                state_dict = torch.jit.load(path, map_location='cpu').state_dict()
        else:
            state_dict = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:  # any failure to unpickle means the same thing to the user
        raise CLIPWeightsError(f'cannot read CLIP weights from {path}: {error}') from error
    for wrapper in ('state_dict', 'model'):
        if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    if not isinstance(state_dict, dict):
        raise CLIPWeightsError(f'{path} does not hold a state dict')
    state_dict = {k.removeprefix('module.'): v for k, v in state_dict.items()}
    # Traced archives can carry the causal-mask buffer; it is rebuilt, not loaded.
    return {k: v for k, v in state_dict.items()
            if k not in NON_PARAMETER_KEYS and k.split('.')[-1] != 'attn_mask'}


def image_preprocess(resolution):
    """OpenAI's preprocessing for PIL images: bicubic resize, centre crop, tensor, CLIP normalisation."""
    return transforms.Compose([
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(resolution),
        lambda image: image.convert('RGB'),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])


def load(name_or_path, device='cpu', jit=False):
    """(CLIP in eval mode, torchvision preprocessing for PIL images) of a known model name (looked up in
    :func:`cache_dir`) or a weights file; ``jit`` must be False (the model is always eager fp32)."""
    if jit:
        raise ValueError('jit=True is not supported: this package builds an eager model from the weights')
    path = resolve_model_path(name_or_path)
    try:
        model = build_model(load_state_dict(path))
    except (KeyError, RuntimeError) as error:
        raise CLIPWeightsError(f'{path}: not a CLIP ViT state dict: {error}') from error
    return model.to(device), image_preprocess(model.visual.input_resolution)
