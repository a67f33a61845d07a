"""The synthetic dataset of the demo and the tests: short clips of a drawn face whose expression unfolds.

Seven classes. In six, one part of the face moves - the mouth corners, the brows or the mouth opening
- in one of two directions; each class of a pair is the time reversal of the other (corners rising /
falling), so a single frame shows WHICH part moves (it is displaced from rest in every frame and
tinted towards a highlight colour) but only the frame order tells the direction. The seventh class
is a still face. Every clip draws its own face size, position, drift, colours, blinks and pixel
noise, and a run of pure-noise frames (something for the snippet erasing to erase).

Layout of ``DATA.ROOT`` (the demo config sets ``DATA.ROOT: data/synthetic`` and points
``DATA.TRAIN_FILE``, ``DATA.VAL_FILE`` and ``DATA.LABEL_LIST`` at the three files inside it)::

    train.txt, test.txt       3-field lists, paths relative to DATA.ROOT
    labels.csv                id,name with the class descriptions
    frames/<split>/<id>/<t>.jpg   JPEG frame folders (DATA.SYNTHETIC.FORMAT 'frames'), or
    videos/<split>/<id>.mp4       mp4 files, MPEG-4 part 2 (FORMAT 'video')
    synthetic.json            the DATA.SYNTHETIC settings the files were generated with

Only the format the lists use is written: writing both took 40 % longer for no use, and changing any
setting (FORMAT included) regenerates the dataset anyway.

Drawing is vectorised over clips, frames and pixels (torch), deterministic for ``DATA.SYNTHETIC.SEED``,
and takes seconds for the default sizes.
"""
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

from utils.config import ConfigError

logger = logging.getLogger(__name__)

# (description, moving part, direction): direction -1 plays the +1 motion backwards.
CLASSES = (
    ('mouth corners rising', 'corners', 1),
    ('mouth corners falling', 'corners', -1),
    ('brows rising', 'brows', 1),
    ('brows falling', 'brows', -1),
    ('mouth opening', 'mouth', 1),
    ('mouth closing', 'mouth', -1),
    ('still face', None, 0),
)
PARTS = ('corners', 'brows', 'mouth')
# Full movement of each part, in units of the face's half height.
PART_AMPLITUDE = {'corners': 0.28, 'brows': 0.22, 'mouth': 0.3}
SPLITS = ('train', 'test')
FILES = {'train': 'train.txt', 'test': 'test.txt', 'labels': 'labels.csv', 'settings': 'synthetic.json'}
# Frames per second of the mp4 files (informational only).
VIDEO_FPS = 8
JPEG_QUALITY = 95
# Clips drawn at once: small arrays are recycled by the allocator instead of being mapped afresh (page
# faults made chunks of 64 clips 40 % slower per clip).
CHUNK_CLIPS = 8
# Folder of each storage format (DATA.SYNTHETIC.FORMAT) under DATA.ROOT.
STORAGE_FOLDERS = {'frames': 'frames', 'video': 'videos'}
# Threads writing JPEG and mp4 files while the next chunk is drawn.
WRITER_THREADS = 2
BLINK_OPENNESS = 0.15
# Parameters that hold an RGB colour per clip, in painting order: background, face, eyes, brows, lips,
# mouth opening.
COLOUR_KEYS = ('background', 'skin', 'feature', 'brows_colour', 'corners_colour', 'mouth_colour')


def drawing_settings(synthetic):
    """The ``DATA.SYNTHETIC`` settings that determine the clips' pixels (a plain dict)."""
    return {key: synthetic[key] for key in sorted(synthetic) if key != 'GENERATE'}


def validate_synthetic_settings(synthetic):
    """Raise ``ConfigError`` naming the ``DATA.SYNTHETIC`` key whose value cannot be generated."""
    rules = [
        ('TRAIN_PER_CLASS', synthetic.TRAIN_PER_CLASS >= 1, 'must be at least 1'),
        ('TEST_PER_CLASS', synthetic.TEST_PER_CLASS >= 1, 'must be at least 1'),
        ('CLIP_LENGTH', synthetic.CLIP_LENGTH >= 3, 'must be at least 3'),
        ('FRAME_SIZE', synthetic.FRAME_SIZE >= 32, 'must be at least 32'),
        ('NOISE_FRAMES', 0 <= synthetic.NOISE_FRAMES <= synthetic.CLIP_LENGTH // 2,
         'must lie in [0, CLIP_LENGTH // 2]'),
        ('ONSET_LEVEL', 0 <= synthetic.ONSET_LEVEL < 1, 'must lie in [0, 1)'),
        ('HIGHLIGHT', 0 <= synthetic.HIGHLIGHT <= 1, 'must lie in [0, 1]'),
        ('MOTION', synthetic.MOTION > 0, 'must be positive'),
        ('PIXEL_NOISE', synthetic.PIXEL_NOISE >= 0, 'must not be negative'),
        ('FORMAT', synthetic.FORMAT in ('frames', 'video'), "must be 'frames' or 'video'"),
    ]
    for key, valid, rule in rules:
        if not valid:
            raise ConfigError(f'DATA.SYNTHETIC.{key} = {synthetic[key]!r}: {rule}')


# ----------------------------------------------------------------------------------------------------
# Clip parameters
# ----------------------------------------------------------------------------------------------------
def _motion_levels(rng, directions, length, onset_level):
    """Per-frame displacement of the moving part ``[N, L]``: a smooth ramp from ``onset_level`` to 1
    between random start and end frames, played backwards for direction -1, 0 for still faces."""
    count = len(directions)
    time_axis = np.arange(length)[None, :] / (length - 1)  # [1, L]
    start = rng.uniform(0.0, 0.35, (count, 1))
    end = rng.uniform(0.65, 1.0, (count, 1))
    progress = np.clip((time_axis - start) / (end - start), 0, 1)
    ramp = onset_level + (1 - onset_level) * progress * progress * (3 - 2 * progress)  # smoothstep
    ramp = np.where(directions[:, None] < 0, ramp[:, ::-1], ramp)
    return np.where(directions[:, None] == 0, 0.0, ramp)


def _blink_openness(rng, count, length):
    """Eye openness ``[N, L]``: 1, or BLINK_OPENNESS during 0-2 blinks of 1-2 frames."""
    openness = np.ones((count, length))
    for _ in range(2):
        blinking = rng.random(count) < 0.5
        start = rng.integers(0, length - 1, count)
        duration = rng.integers(1, 3, count)
        frames = np.arange(length)[None, :]
        closed = blinking[:, None] & (frames >= start[:, None]) & (frames < (start + duration)[:, None])
        openness[closed] = BLINK_OPENNESS
    return openness


def _face_geometry(rng, count, length, size, drift):
    """Face centre ``[N, L]`` (x and y, drifting linearly) and half axes ``[N]``, in pixels."""
    half_height = rng.uniform(0.3, 0.4, count) * size
    half_width = half_height * rng.uniform(0.75, 0.92, count)
    centre = size * (0.5 + rng.uniform(-0.08, 0.08, (count, 2)))
    motion = size * rng.uniform(-drift, drift, (count, 2))
    progress = np.linspace(-0.5, 0.5, length)[None, :]
    centre_x = centre[:, :1] + motion[:, :1] * progress
    centre_y = centre[:, 1:] + motion[:, 1:] * progress
    return centre_x, centre_y, half_width, half_height


def _colours(rng, count, highlight):
    """Background, skin and feature colours ``[N, 3]`` and the per-part colours of each clip."""
    background = rng.uniform(0, 255, (count, 3))
    # skin: far enough from the background in brightness to keep the face visible
    lighter = background.mean(axis=1, keepdims=True) < 128
    skin = np.where(lighter, rng.uniform(150, 255, (count, 3)), rng.uniform(40, 110, (count, 3)))
    feature = np.where(lighter, rng.uniform(0, 60, (count, 3)), rng.uniform(190, 255, (count, 3)))
    tint = np.array([230.0, 30.0, 40.0]) + rng.uniform(-25, 25, (count, 3))
    return background, skin, feature, feature * (1 - highlight) + tint * highlight


def sample_clip_parameters(rng, labels, synthetic):
    """Draw everything random about each clip of ``labels`` (numpy arrays, first axis = clip)."""
    count, length, size = len(labels), synthetic.CLIP_LENGTH, synthetic.FRAME_SIZE
    parts = np.array([PARTS.index(CLASSES[label][1]) if CLASSES[label][1] else -1 for label in labels])
    directions = np.array([CLASSES[label][2] for label in labels])
    levels = _motion_levels(rng, directions, length, synthetic.ONSET_LEVEL)
    amplitude = rng.uniform(0.75, 1.0, count)[:, None] * synthetic.MOTION * levels  # [N, L]
    background, skin, feature, tinted = _colours(rng, count, synthetic.HIGHLIGHT)
    params = {'background': background, 'skin': skin, 'feature': feature,
              'openness': _blink_openness(rng, count, length),
              'rest_bend': rng.uniform(-0.04, 0.04, count)}
    params['centre_x'], params['centre_y'], params['half_width'], params['half_height'] = \
        _face_geometry(rng, count, length, size, synthetic.DRIFT)
    for index, part in enumerate(PARTS):
        moving = parts == index
        params[part] = np.where(moving[:, None], amplitude * PART_AMPLITUDE[part], 0.0)
        params[part + '_colour'] = np.where(moving[:, None], tinted, feature)
    params['noise_start'] = rng.integers(0, length - synthetic.NOISE_FRAMES + 1, count)
    return params


# ----------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------
def _ellipse(x, y, centre_x, centre_y, radius_x, radius_y):
    """Anti-aliased coverage (0..1) of filled ellipses ``[N, L, H, W]``.

    ``x`` is ``[W]``, ``y`` is ``[H, 1]``; the other arguments are ``[N, L or 1, 1, 1]``. The two axes
    are computed separately and meet in a single broadcast, which keeps the pixel passes few.
    """
    distance = torch.sqrt(((x - centre_x) / radius_x) ** 2 + ((y - centre_y) / radius_y) ** 2)
    # (1 - distance) * radius approximates the signed distance to the edge in pixels; at least one
    # pixel per unit, so that a flat ellipse (closed eye, closed mouth) thins out instead of smearing
    edge_pixels = torch.minimum(radius_x, radius_y).clamp(min=1.0)
    return distance.neg_().add_(1).mul_(edge_pixels).add_(0.5).clamp_(0, 1)


def _stroke(x, y, centre_x, centre_y, half_length, thickness, bend):
    """Coverage ``[N, L, H, W]`` of a parabolic stroke whose ends lie ``bend`` pixels above its middle
    (arguments as for ``_ellipse``)."""
    along = x - centre_x  # [N, L, 1, W]
    curve_y = centre_y - bend * (along / half_length) ** 2
    lengthwise = (half_length - along.abs() + 0.5).clamp_(0, 1)
    across = (y - curve_y).abs_().neg_().add_(thickness / 2 + 0.5).clamp_(0, 1)
    return across.mul_(lengthwise)


def _feature_layers(x, y, p):
    """Coverage maps ``[N, L, H, W]`` of the face and its features, in painting order."""
    cx, cy, hw, hh = p['centre_x'], p['centre_y'], p['half_width'], p['half_height']
    line = (0.1 * hh).clamp(min=1.3)
    eye_y, brow_y, mouth_y = cy - 0.12 * hh, cy - (0.4 + p['brows']) * hh, cy + 0.45 * hh
    eye_radius, eye_x = 0.11 * hh, [cx + side * 0.42 * hw for side in (-1, 1)]
    # left and right never overlap: one coverage map for both eyes (brows)
    eyes = torch.maximum(*[_ellipse(x, y, ex, eye_y, eye_radius, eye_radius * p['openness'])
                           for ex in eye_x])
    brows = torch.maximum(*[_stroke(x, y, ex, brow_y, 0.2 * hh, line, 0.04 * hh) for ex in eye_x])
    lips = _stroke(x, y, cx, mouth_y, 0.36 * hw, line, (p['corners'] + p['rest_bend']) * hh)
    opening = _ellipse(x, y, cx, mouth_y, 0.24 * hw, (p['mouth'] * hh).clamp(min=1e-3))
    return [_ellipse(x, y, cx, cy, hw, hh), eyes, brows, lips, opening]


def _composite(layers, colours):
    """Paint ``layers`` (coverages ``[N, L, H, W]``) over a background, in order -> ``[N, L, H, W, 3]``.

    Painting is linear: layer i keeps the weight ``coverage_i * prod_{j > i} (1 - coverage_j)`` and
    the background what is left, so the whole picture is one batched product of the weights
    ``[N, L*H*W, 1 + layers]`` with the colours ``[N, 1 + layers, 3]``, not one RGB pass per layer.
    """
    weights, uncovered = [], torch.ones_like(layers[0])
    for coverage in reversed(layers):
        weights.append(coverage * uncovered)
        uncovered = uncovered * (1 - coverage)
    weights = torch.stack([uncovered] + weights[::-1], dim=-1)  # [N, L, H, W, 1 + layers]
    return torch.bmm(weights.flatten(1, 3), colours).view(*weights.shape[:-1], 3)


def _as_tensors(params):
    """numpy parameters ``[N]`` or ``[N, L]`` -> float32 ``[N, L or 1, 1, 1]``."""
    return {key: torch.as_tensor(value, dtype=torch.float32).reshape(len(value), -1, 1, 1)
            for key, value in params.items() if key not in COLOUR_KEYS and key != 'noise_start'}


def draw_clips(params, length, size, pixel_noise, noise_frames, rng):
    """Render clips from ``sample_clip_parameters`` -> uint8 ``[N, L, size, size, 3]`` (RGB).

    Args:
        params: the clips' parameters.
        length: frames per clip.
        size: frame side in pixels.
        pixel_noise: standard deviation of the Gaussian pixel noise (0..255 scale).
        noise_frames: length of the run of pure-noise frames, starting at ``params['noise_start']``.
        rng: numpy generator; it seeds the noise, so the output depends on it alone.
    """
    generator = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
    x = torch.arange(size, dtype=torch.float32) + 0.5  # pixel centres
    layers = _feature_layers(x, x[:, None], _as_tensors(params))
    colours = torch.as_tensor(np.stack([params[key] for key in COLOUR_KEYS], axis=1),
                              dtype=torch.float32)  # [N, 6, 3], in painting order
    image = _composite(layers, colours)  # [N, L, H, W, 3]
    if pixel_noise:  # grey noise: a third of the cost of colour noise, and JPEG blurs the colour anyway
        image.add_(torch.randn(image.shape[:-1] + (1,), generator=generator), alpha=pixel_noise)
    frames = torch.arange(length)[None, :]
    start = torch.as_tensor(params['noise_start'])[:, None]
    noisy = (frames >= start) & (frames < start + noise_frames)  # [N, L]
    image[noisy] = torch.rand((int(noisy.sum()), size, size, 3), generator=generator) * 256
    return image.clamp_(0, 255).to(torch.uint8).numpy()


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------
def split_labels(split, synthetic):
    """The labels of a split's clips, in list order (class-interleaved, balanced)."""
    per_class = synthetic.TRAIN_PER_CLASS if split == 'train' else synthetic.TEST_PER_CLASS
    return np.arange(per_class * len(CLASSES)) % len(CLASSES)


def clip_path(split, clip_id, storage):
    """A clip's path relative to DATA.ROOT: its frame folder or its mp4 file."""
    name = f'{clip_id:05d}' if storage == 'frames' else f'{clip_id:05d}.mp4'
    return os.path.join(STORAGE_FOLDERS[storage], split, name)


def write_frame_folder(folder, frames, quality=JPEG_QUALITY):
    """Write RGB frames ``[L, H, W, 3]`` as ``folder/000.jpg``, ``001.jpg``, ... (JPEG ``quality``)."""
    os.makedirs(folder)
    for index, frame in enumerate(frames[..., ::-1]):  # OpenCV writes BGR
        path = os.path.join(folder, f'{index:03d}.jpg')
        if not cv2.imwrite(path, frame, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f'cannot write {path}')


def write_mp4(path, frames, fps=VIDEO_FPS):
    """Write RGB frames ``[L, H, W, 3]`` as an MPEG-4 part 2 ``.mp4`` file."""
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f'OpenCV cannot write the mp4 file {path} (codec mp4v unavailable?)')
    for frame in frames[..., ::-1]:
        writer.write(np.ascontiguousarray(frame))
    writer.release()


def _write_clip(root, split, clip_id, frames, storage):
    path = os.path.join(root, clip_path(split, clip_id, storage))
    if storage == 'frames':
        write_frame_folder(path, frames)
    else:
        write_mp4(path, frames)


def _write_split(root, split, synthetic, rng, executor):
    """Draw and write all clips of a split; returns the number written.

    A chunk's files are written by ``executor``'s threads (OpenCV releases the GIL) while the next
    chunk is drawn; at most two chunks are in memory.
    """
    labels = split_labels(split, synthetic)
    os.makedirs(os.path.join(root, STORAGE_FOLDERS[synthetic.FORMAT], split))
    previous_writes = []
    for start in range(0, len(labels), CHUNK_CLIPS):
        chunk = labels[start:start + CHUNK_CLIPS]
        params = sample_clip_parameters(rng, chunk, synthetic)
        clips = draw_clips(params, synthetic.CLIP_LENGTH, synthetic.FRAME_SIZE, synthetic.PIXEL_NOISE,
                           synthetic.NOISE_FRAMES, rng)
        for write in previous_writes:
            write.result()  # re-raises a failed write
        previous_writes = [executor.submit(_write_clip, root, split, start + offset, frames,
                                           synthetic.FORMAT)
                           for offset, frames in enumerate(clips)]
    for write in previous_writes:
        write.result()
    return len(labels)


def _write_text(path, text):
    """Write a file atomically: a temporary file moved into place."""
    temporary = f'{path}.tmp{os.getpid()}'
    with open(temporary, 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(temporary, path)


def write_lists(root, synthetic):
    """Write ``train.txt``, ``test.txt``, ``labels.csv`` and the settings record ``synthetic.json``."""
    for split in SPLITS:
        lines = [f'{clip_path(split, clip_id, synthetic.FORMAT)} {synthetic.CLIP_LENGTH} {label}\n'
                 for clip_id, label in enumerate(split_labels(split, synthetic))]
        _write_text(os.path.join(root, FILES[split]), ''.join(lines))
    _write_text(os.path.join(root, FILES['labels']),
                'id,name\n' + ''.join(f'{i},{name}\n' for i, (name, _, _) in enumerate(CLASSES)))
    _write_text(os.path.join(root, FILES['settings']),
                json.dumps(drawing_settings(synthetic), indent=1) + '\n')


def _replace_clip_folders(root, staging):
    """Move the freshly written ``frames/`` and ``videos/`` from ``staging`` into ``root``."""
    for name in STORAGE_FOLDERS.values():
        target = os.path.join(root, name)
        if os.path.exists(target):
            shutil.rmtree(target)
        if os.path.exists(os.path.join(staging, name)):
            os.replace(os.path.join(staging, name), target)


def generate_synthetic_dataset(root, synthetic):
    """Generate the synthetic dataset into ``root`` (replacing a previous one there).

    Clips are written into a staging folder first; the lists and ``synthetic.json`` come last, so an
    interrupted run leaves no lists pointing at half-written clips.

    Args:
        root: the dataset folder (``DATA.ROOT``).
        synthetic: the ``DATA.SYNTHETIC`` settings.

    Raises:
        ConfigError: invalid settings, or ``root`` holds ``frames/``/``videos/`` of something other
            than a generated synthetic dataset.
    """
    validate_synthetic_settings(synthetic)
    settings_file = os.path.join(root, FILES['settings'])
    foreign = [name for name in STORAGE_FOLDERS.values() if os.path.exists(os.path.join(root, name))]
    if foreign and not os.path.isfile(settings_file):
        raise ConfigError(f'DATA.ROOT = {root!r} already holds {foreign} without {FILES["settings"]}: '
                          f'not a generated synthetic dataset, refusing to replace it')
    started = time.perf_counter()
    os.makedirs(root, exist_ok=True)
    staging = os.path.join(root, f'.staging-{os.getpid()}')
    shutil.rmtree(staging, ignore_errors=True)
    rng = np.random.default_rng(synthetic.SEED)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # drawing takes one core, the writer threads the rest
    try:
        with ThreadPoolExecutor(WRITER_THREADS) as executor:
            counts = {split: _write_split(staging, split, synthetic, rng, executor) for split in SPLITS}
    finally:
        torch.set_num_threads(threads)
    if os.path.isfile(settings_file):
        os.remove(settings_file)  # the old lists are no longer valid from here on
    _replace_clip_folders(root, staging)
    shutil.rmtree(staging)
    write_lists(root, synthetic)
    logger.info('synthetic dataset: %d training and %d test clips of %d classes written to %s in '
                '%.1f s', counts['train'], counts['test'], len(CLASSES), root,
                time.perf_counter() - started)
    return counts


def _read_settings_record(root):
    try:
        with open(os.path.join(root, FILES['settings']), encoding='utf-8') as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _check_config_points_at(config, root):
    expected = {'DATA.TRAIN_FILE': FILES['train'], 'DATA.VAL_FILE': FILES['test'],
                'DATA.LABEL_LIST': FILES['labels']}
    values = {'DATA.TRAIN_FILE': config.DATA.TRAIN_FILE, 'DATA.VAL_FILE': config.DATA.VAL_FILE,
              'DATA.LABEL_LIST': config.DATA.LABEL_LIST}
    for key, name in expected.items():
        if key == 'DATA.TRAIN_FILE' and not values[key]:
            continue  # evaluation-only runs need no training list
        wanted = os.path.join(root, name)
        if os.path.abspath(values[key]) != os.path.abspath(wanted):
            raise ConfigError(f'{key} = {values[key]!r}: with DATA.SYNTHETIC.GENERATE it must name the '
                              f'generated file {wanted!r}')
    if config.DATA.NUM_CLASSES != len(CLASSES):
        raise ConfigError(f'DATA.NUM_CLASSES = {config.DATA.NUM_CLASSES}: the synthetic dataset has '
                          f'{len(CLASSES)} classes')


def ensure_synthetic_dataset(config):
    """Generate the synthetic dataset into ``DATA.ROOT`` unless it is there already.

    Does nothing unless ``DATA.SYNTHETIC.GENERATE``. Regenerates when a list, the label CSV or
    ``synthetic.json`` is missing or the recorded settings differ from ``DATA.SYNTHETIC`` (so that a
    changed knob takes effect). Under DDP call it on rank 0, then synchronise.

    Args:
        config: the run's config; ``DATA.TRAIN_FILE`` (unless empty), ``DATA.VAL_FILE`` and
            ``DATA.LABEL_LIST`` must name ``train.txt``, ``test.txt`` and ``labels.csv`` in ``DATA.ROOT``.

    Returns:
        bool: True when files were (re)written.

    Raises:
        ConfigError: a key that does not fit the generated dataset, or invalid settings.
    """
    synthetic = config.DATA.SYNTHETIC
    if not synthetic.GENERATE:
        return False
    root = config.DATA.ROOT
    if not root:
        raise ConfigError("DATA.ROOT = '': name the folder for the synthetic dataset (DATA.SYNTHETIC)")
    _check_config_points_at(config, root)
    validate_synthetic_settings(synthetic)
    complete = all(os.path.isfile(os.path.join(root, FILES[key])) for key in ('train', 'test', 'labels'))
    if complete and _read_settings_record(root) == drawing_settings(synthetic):
        return False
    generate_synthetic_dataset(root, synthetic)
    return True
