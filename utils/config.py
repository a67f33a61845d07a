"""Configuration: the yacs defaults (one source of truth), loading, command-line flags and validation.

Every setting of the project lives in ``_C`` below, with a comment. Defaults are the published DK-CLIP
settings (ViT-B/16, T = 16, S = 4, DFEW). A YAML written for the official release loads unchanged.

Typical use::

    config = get_default_config()            # a fresh copy of the defaults
    config = load_config(parse_args(argv))   # defaults <- YAML (with BASE) <- --opts <- flags
    validate_config(config)                   # named errors before anything heavy starts
"""
import argparse
import logging
import os

import yaml
from yacs.config import CfgNode as CN

from utils.errors import UserError
from utils.labels import read_label_csv

logger = logging.getLogger(__name__)

_C = CN()

# Other YAML files this one builds on, relative to the including file; merged first, in order.
_C.BASE = ['']

# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------
_C.DATA = CN()
# Prefix joined to every relative path of the annotation lists.
_C.DATA.ROOT = ''
# Training list (`<path> <num_frames> <label>` or `<path> <label>` per line, see docs/data.md, section 3).
_C.DATA.TRAIN_FILE = ''
# Test list, evaluated after every epoch (the official release calls it VAL_FILE).
_C.DATA.VAL_FILE = ''
# Fraction of the training list held out (stratified, seeded) as a validation split for choosing the
# best epoch, so that model selection need not look at the test set. 0: select on VAL_FILE (published).
_C.DATA.VAL_FRACTION = 0.0
# Dataset name: dfew, ferv39k, mafw, mafw_compound or synthetic. Used in logs and result tables.
_C.DATA.DATASET = 'dfew'
# Side of the square network input, in pixels.
_C.DATA.INPUT_SIZE = 224
# Frames sampled per video (T), one per temporal segment.
_C.DATA.NUM_FRAMES = 16
# Snippets per video (S); T must be divisible by S. Each snippet holds T / S consecutive sampled frames.
_C.DATA.NUM_DIVIDE = 4
# Number of expression classes (K); must equal the number of rows of LABEL_LIST.
_C.DATA.NUM_CLASSES = 7
# CSV `id,name` with one prompt per class (AU-enhanced prompts by default, see labels/).
_C.DATA.LABEL_LIST = 'labels/dfew_7_AUE_labels.csv'
# Data-loader worker processes per GPU process (0: load in the main process).
_C.DATA.NUM_WORKERS = 8
# Check that every path of the lists exists before training starts (fast existence pass).
_C.DATA.CHECK_FILES = False
# Replace an unreadable sample by another one (logged once per file, counted per epoch) instead of
# stopping with an error.
_C.DATA.SKIP_BAD = False
# Normalisation on the 0..255 scale. Default: the ImageNet statistics the release used. CLIP's own are
# MEAN (122.771, 116.746, 104.094), STD (68.501, 66.632, 70.323).
_C.DATA.MEAN = [123.675, 116.28, 103.53]
_C.DATA.STD = [58.395, 57.12, 57.375]
# Order of the images of a frame folder: 'natural' (numbers in names compared as numbers: 2 before 10)
# or 'lexicographic' (names compared as strings, as the release sorted them: 10 before 2). The two agree
# when frame numbers are zero-padded (docs/data.md, section 12).
_C.DATA.FRAME_ORDER = 'natural'

# The synthetic dataset of the demo and the tests (scripts/make_synthetic_dataset.py).
_C.DATA.SYNTHETIC = CN()
# Generate the dataset into DATA.ROOT before training when its lists are missing.
_C.DATA.SYNTHETIC.GENERATE = False
# Training / test clips per class.
_C.DATA.SYNTHETIC.TRAIN_PER_CLASS = 400
_C.DATA.SYNTHETIC.TEST_PER_CLASS = 40
# Frames per generated clip (32 = 2 x DATA.NUM_FRAMES, so that training sampling draws a random frame
# from each pair and covers the whole clip) and their side in pixels (decord cannot read mp4 frames 16,
# 24, 48 or 72 pixels wide).
_C.DATA.SYNTHETIC.CLIP_LENGTH = 32
_C.DATA.SYNTHETIC.FRAME_SIZE = 40
# Storage of the generated clips: 'frames' (JPEG folders) or 'video' (mp4 files).
_C.DATA.SYNTHETIC.FORMAT = 'frames'
# Seed of the generator; the same seed gives the same files.
_C.DATA.SYNTHETIC.SEED = 0
# Consecutive frames of pure noise in each clip (something for the snippet erasing to erase).
_C.DATA.SYNTHETIC.NOISE_FRAMES = 6
# Standard deviation of the Gaussian pixel noise, on the 0..255 scale.
_C.DATA.SYNTHETIC.PIXEL_NOISE = 6.0
# Displacement of the moving part at the start of its motion, as a fraction of the full movement.
# Above 0, every frame shows which part moves (a small model trained from scratch needs that); only the
# frame order tells the direction.
_C.DATA.SYNTHETIC.ONSET_LEVEL = 0.3
# How strongly the moving part is tinted towards a highlight colour (0: drawn like the other parts).
_C.DATA.SYNTHETIC.HIGHLIGHT = 0.5
# Scale of the parts' movement (1: corners 0.28, brows 0.22, mouth opening 0.3 face half-heights).
_C.DATA.SYNTHETIC.MOTION = 1.0
# Largest drift of the face over a clip, as a fraction of the frame size along each axis.
_C.DATA.SYNTHETIC.DRIFT = 0.08
# Which clips are the test set (the clips themselves do not change): 0, the generated test clips
# (train.txt / test.txt); k >= 1, the k-th block of TEST_PER_CLASS training clips per class, the test
# clips joining the training set (train_fold<k>.txt / test_fold<k>.txt). Folds 0 to
# TRAIN_PER_CLASS // TEST_PER_CLASS test on disjoint clips (configs/synthetic/fold<k>.yaml).
_C.DATA.SYNTHETIC.FOLD = 0

# ----------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------
_C.MODEL = CN()
# CLIP architecture: ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14@336px, or 'custom' (MODEL.CUSTOM).
_C.MODEL.ARCH = 'ViT-B/16'
# CLIP weights: a local OpenAI JIT archive or state-dict file. Empty: ARCH is looked up in the CLIP
# cache folder ($CLIP_CACHE, default ~/.cache/clip). Not needed when resuming from a DK-CLIP checkpoint.
_C.MODEL.PRETRAINED = ''
# Start from random CLIP weights of ARCH (demo and tests only; a real run needs pretrained weights).
_C.MODEL.RANDOM_INIT = False
# Dimensions of a randomly initialised CLIP when ARCH is 'custom'.
_C.MODEL.CUSTOM = CN()
_C.MODEL.CUSTOM.EMBED_DIM = 512
_C.MODEL.CUSTOM.IMAGE_RESOLUTION = 224
_C.MODEL.CUSTOM.VISION_LAYERS = 12
_C.MODEL.CUSTOM.VISION_WIDTH = 768
_C.MODEL.CUSTOM.VISION_PATCH_SIZE = 16
_C.MODEL.CUSTOM.TEXT_LAYERS = 12
_C.MODEL.CUSTOM.TEXT_WIDTH = 512
# DK-CLIP checkpoint to resume training from (model, optimizer, schedule, epoch).
_C.MODEL.RESUME = ''
# Stochastic depth: block i of the vision encoders gets DROP_PATH_RATE * i / (L - 1).
_C.MODEL.DROP_PATH_RATE = 0.0
# Freeze CLIP's text encoder and cache the class-prompt features (published: True).
_C.MODEL.FIX_TEXT = True
# Train the snippet integration encoder (visual_semantic) and msim. The release leaves both frozen at
# their initial values (its parameter filter looked for X-CLIP's `mit`); False reproduces that. True:
# msim trains at the new-module rate (TRAIN.LR x NEW_MODULE_LR_SCALE, like X-CLIP's `mit`),
# visual_semantic at TRAIN.LR (its message_* at the new-module rate). visual_semantic.ln_post and .proj
# stay frozen in every mode: the forward pass never uses them (so DDP needs no find_unused_parameters).
_C.MODEL.TRAIN_INTEGRATION = False
# Cross-attention layers of the video-specific prompt generator.
_C.MODEL.PROMPT_LAYERS = 2
# Initial value of the prompt generator's learnable scale `alpha`.
_C.MODEL.PROMPT_ALPHA = 0.1
# Residual attention blocks of the multi-snippet integration module (msim).
_C.MODEL.MSIM_LAYERS = 1
# Standard deviation of the initial msim positional embedding (truncated normal; 0.02 as released).
# msim's positional embedding is the model's only source of snippet order, and the snippet features
# it is added to are ~50x larger, so a model trained from random weights (the demo) needs ~1.0 to
# learn the order in minutes rather than hours.
_C.MODEL.MSIM_POS_INIT_STD = 0.02
# Snippets whose relevance weight is below this are erased (tau). 0 disables erasing.
_C.MODEL.ERASE_THRESHOLD = 0.15
# Use the local (per-snippet) branch in the loss and at evaluation. False: global head only.
_C.MODEL.USE_LOCAL = True
# Precision of the head (relevance, erase mask, logits) under autocast: 'autocast' computes its dot
# products in autocast's 16-bit dtype, as the release did (published); 'fp32' keeps them in fp32. The
# two differ only under autocast (TRAIN.OPT_LEVEL O1 or bf16); see docs/model.md, section 15.
_C.MODEL.HEAD_PRECISION = 'autocast'

# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------
_C.TRAIN = CN()
_C.TRAIN.EPOCHS = 50
# Linear warm-up from 0, in epochs (converted to optimizer updates).
_C.TRAIN.WARMUP_EPOCHS = 5
# AdamW weight decay; not applied to 1-D parameters, biases and positional embeddings.
_C.TRAIN.WEIGHT_DECAY = 0.001
# Base learning rate (per update of TRAIN.BATCH_SIZE x ACCUMULATION_STEPS x GPUs videos).
_C.TRAIN.LR = 2.e-6
# Learning-rate factor for the new modules (names containing message_, mit or prompts).
_C.TRAIN.NEW_MODULE_LR_SCALE = 10.0
# Floor of the cosine schedule, as a fraction of TRAIN.LR.
_C.TRAIN.MIN_LR_RATIO = 0.01
# Videos per GPU process and step.
_C.TRAIN.BATCH_SIZE = 8
# Micro-batches accumulated per optimizer update.
_C.TRAIN.ACCUMULATION_STEPS = 2
# An epoch whose micro-batches are not a multiple of ACCUMULATION_STEPS ends with a partial window:
# 'drop' discards its gradient, as the release did (published); 'update' makes one more update with the
# mean over the partial window.
_C.TRAIN.TRAILING_MICRO_BATCHES = 'drop'
# Learning-rate schedule (cosine with linear warm-up, stepped per optimizer update).
_C.TRAIN.LR_SCHEDULER = 'cosine'
# Optimizer (AdamW, betas (0.9, 0.98), eps 1e-8).
_C.TRAIN.OPTIMIZER = 'adamw'
# Precision: O0 = fp32, O1 = fp16 autocast with gradient scaling (published), bf16 = bf16 autocast.
_C.TRAIN.OPT_LEVEL = 'O1'
# Resume from OUTPUT/last.pth when it exists.
_C.TRAIN.AUTO_RESUME = False
# Activation checkpointing over the vision transformer blocks (less memory, more compute).
_C.TRAIN.USE_CHECKPOINT = False
# Epochs 0 .. CONSISTENCY_EPOCHS - 1 use the local and consistency terms; later epochs the global CE
# only (the release's `epoch > 13` switch).
_C.TRAIN.CONSISTENCY_EPOCHS = 14
# Clip the gradient norm to this value before each update (0: no clipping, as published).
_C.TRAIN.CLIP_GRAD = 0.0
# torch.compile the model (nn.Module.compile: state-dict names unchanged; models.builder).
_C.TRAIN.COMPILE = False
# torch.compile's mode with TRAIN.COMPILE ('' = its default; 'reduce-overhead' adds CUDA graphs,
# 'max-autotune-no-cudagraphs' benchmarks matmul kernels while compiling, which takes minutes).
_C.TRAIN.COMPILE_MODE = ''

# ----------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------
_C.LOSS = CN()
# Consistency term between the local and global heads: 'official' (SoftCE of softmax(local) against
# softmax(global), gradient into both, as released) or 'kl' (KL divergence to the detached global
# distribution).
_C.LOSS.CONSISTENCY = 'official'
# Weight lambda of the local and consistency terms.
_C.LOSS.LAMBDA = 1.0

# ----------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------
_C.AUG = CN()
# Label smoothing of the targets (off value LABEL_SMOOTH / K).
_C.AUG.LABEL_SMOOTH = 0.1
# Probability of colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) per clip.
_C.AUG.COLOR_JITTER = 0.8
# Probability of converting a clip to greyscale.
_C.AUG.GRAY_SCALE = 0.2
# Draw new colour-jitter factors and operation order for every frame (the release, published: True);
# False draws them once per clip. The apply / skip coin is tossed once per clip either way.
_C.AUG.PER_FRAME_JITTER = True
# Mixup alpha (lambda ~ Beta(alpha, alpha)); 0 disables batch blending.
_C.AUG.MIXUP = 0.8
# FMix alpha (lambda ~ Beta(alpha, alpha)).
_C.AUG.CUTMIX = 1.0
# Probability of FMix instead of mixup for a batch.
_C.AUG.MIXUP_SWITCH_PROB = 0.5
# FMix mask construction: 'release' (published: the release's anisotropic mask, one cosine period along
# x per row) or 'isotropic' (the FMix paper's mask); see datasets/blending.py.
_C.AUG.FMIX_MASK = 'release'

# ----------------------------------------------------------------------------------------------------
# Testing
# ----------------------------------------------------------------------------------------------------
_C.TEST = CN()
# Temporal views per video at test time.
_C.TEST.NUM_CLIP = 1
# Spatial views per video at test time: 1 (centre crop) or 3.
_C.TEST.NUM_CROP = 1
# Evaluate MODEL.RESUME (or the auto-resumed checkpoint) and stop.
_C.TEST.ONLY_TEST = False
# Metric of the global head that picks the best epoch: WAR (published) or UAR.
_C.TEST.BEST_METRIC = 'WAR'
# Shards of the release's UAR (UAR_release, reported beside UAR): the test list split by stride into
# this many shards (video i in shard i mod n), UAR computed per shard and averaged. 2 reproduces the
# published figures (the release's 2 GPUs), whatever number of processes this run uses; 1 gives UAR.
_C.TEST.RELEASE_UAR_SHARDS = 2
# Videos per GPU process and evaluation step (0: TRAIN.BATCH_SIZE).
_C.TEST.BATCH_SIZE = 0
# Permute the frames of every test clip at random (seeded by SEED): a check that the model uses their
# order (scripts/eval.py, --only_test).
_C.TEST.SHUFFLE_FRAMES = False
# After training, also evaluate the best checkpoint on frame-shuffled test clips and print its lines
# (`SHUFFLED head=...`) next to the RESULT lines (the demo does).
_C.TEST.REPORT_SHUFFLED = False

# ----------------------------------------------------------------------------------------------------
# Misc
# ----------------------------------------------------------------------------------------------------
# Output folder: config.yaml, logs, metrics.jsonl, TensorBoard events, checkpoints.
_C.OUTPUT = 'output'
# Write last.pth every SAVE_FREQ epochs (and after the last one).
_C.SAVE_FREQ = 1
# Log a training line every PRINT_FREQ steps.
_C.PRINT_FREQ = 20
# Random seed (offset by the rank in each process).
_C.SEED = 1024

KNOWN_OPT_LEVELS = ('O0', 'O1', 'bf16')
KNOWN_COMPILE_MODES = ('', 'default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
KNOWN_CONSISTENCY = ('official', 'kl')
KNOWN_BEST_METRICS = ('WAR', 'UAR')
KNOWN_FMIX_MASKS = ('release', 'isotropic')
KNOWN_FRAME_ORDERS = ('natural', 'lexicographic')
KNOWN_HEAD_PRECISIONS = ('autocast', 'fp32')
KNOWN_TRAILING_MICRO_BATCHES = ('drop', 'update')


class ConfigError(UserError, ValueError):
    """A setting (or a config file) is invalid; the message names the key or the file."""


def get_default_config():
    """Return a fresh, mutable copy of the project's defaults."""
    return _C.clone()


def merge_config_file(config, path):
    """Merge a YAML file into ``config``, after the files named in its ``BASE`` list.

    BASE paths are relative to the file that names them. Unknown keys raise ``ConfigError`` naming
    the file and the key.
    """
    if not os.path.isfile(path):
        raise ConfigError(f'config file not found: {path}')
    with open(path) as f:
        try:
            content = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f'{path}: not valid YAML: {error}') from error
    if not isinstance(content, dict):
        raise ConfigError(f'{path}: expected a mapping of settings at the top level')
    for base in content.pop('BASE', None) or []:
        if base:
            merge_config_file(config, os.path.join(os.path.dirname(os.path.abspath(path)), base))
    config.defrost()
    try:
        config.merge_from_other_cfg(CN(content))
    except (KeyError, ValueError) as error:
        raise ConfigError(f'{path}: {error}') from error
    return config


def merge_opts(config, opts):
    """Merge ``KEY VALUE`` pairs from the command line (``--opts TRAIN.LR 1e-5 ...``)."""
    if not opts:
        return config
    if len(opts) % 2:
        raise ConfigError(f'--opts needs KEY VALUE pairs, got an odd number of items: {opts}')
    config.defrost()
    try:
        config.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as error:
        raise ConfigError(f'--opts: {error}') from error
    return config


def add_config_arguments(parser):
    """Add the official release's configuration flags to an ``argparse`` parser."""
    parser.add_argument('--config', '-cfg', default='', help='path to a YAML config file')
    parser.add_argument('--opts', default=None, nargs='+', help="override settings: 'KEY VALUE' pairs")
    parser.add_argument('--output', default='', help='output folder (OUTPUT)')
    parser.add_argument('--resume', default='', help='DK-CLIP checkpoint to resume from (MODEL.RESUME)')
    parser.add_argument('--pretrained', default='', help='CLIP weights file (MODEL.PRETRAINED)')
    parser.add_argument('--only_test', action='store_true', help='evaluate only (TEST.ONLY_TEST)')
    parser.add_argument('--batch-size', type=int, default=0, help='videos per GPU (TRAIN.BATCH_SIZE)')
    parser.add_argument('--accumulation-steps', type=int, default=0,
                        help='gradient accumulation steps (TRAIN.ACCUMULATION_STEPS)')
    # torch.distributed.launch passes --local_rank; torchrun uses the LOCAL_RANK variable instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=-1, help=argparse.SUPPRESS)
    return parser


def config_for_checkpoint(stored_config, config_path='', opts=None):
    """The config to use a trained checkpoint with (``scripts/eval.py``, ``scripts/predict.py``).

    Args:
        stored_config: the YAML text a checkpoint holds (its ``config`` entry), or None.
        config_path: a YAML file (with BASE) to use instead of the stored config; '' for the stored one.
        opts: ``KEY VALUE`` overrides merged last.

    Returns:
        the config, not frozen and not validated (the caller sets what its tool needs first).
    """
    config = get_default_config()
    if config_path:
        merge_config_file(config, config_path)
    elif stored_config is None:
        raise ConfigError('the checkpoint holds no config: pass the config it was trained with (--config)')
    else:
        merge_known_keys(config, CN.load_cfg(stored_config))
    merge_opts(config, opts)
    config.defrost()
    return config


def merge_known_keys(config, stored):
    """Merge a stored config (a checkpoint's) into ``config``, skipping keys this version does not have:
    those of the official release's extra options or of an older version of this project."""
    unknown = _drop_unknown_keys(stored, config)
    if unknown:
        logger.warning('the checkpoint\'s config has keys this version does not know; ignored: %s',
                       ', '.join(unknown))
    config.merge_from_other_cfg(stored)


def _drop_unknown_keys(stored, reference, prefix=''):
    unknown = []
    for key in list(stored):
        name = prefix + key
        if key not in reference:
            unknown.append(name)
            del stored[key]
        elif isinstance(stored[key], CN) and isinstance(reference[key], CN):
            unknown += _drop_unknown_keys(stored[key], reference[key], name + '.')
    return unknown


def load_config(args):
    """Build the run's config: defaults, then ``args.config`` (with BASE), ``args.opts``, then flags."""
    config = get_default_config()
    if args.config:
        merge_config_file(config, args.config)
    merge_opts(config, args.opts)
    config.defrost()
    if args.output:
        config.OUTPUT = args.output
    if args.resume:
        config.MODEL.RESUME = args.resume
    if args.pretrained:
        config.MODEL.PRETRAINED = args.pretrained
    if args.only_test:
        config.TEST.ONLY_TEST = True
    if args.batch_size:
        config.TRAIN.BATCH_SIZE = args.batch_size
    if args.accumulation_steps:
        config.TRAIN.ACCUMULATION_STEPS = args.accumulation_steps
    config.freeze()
    return config


def eval_batch_size(config):
    """Videos per evaluation batch: ``TEST.BATCH_SIZE``, or ``TRAIN.BATCH_SIZE`` when it is 0."""
    return config.TEST.BATCH_SIZE or config.TRAIN.BATCH_SIZE


def _require(condition, key, value, rule):
    if not condition:
        raise ConfigError(f'{key} = {value!r}: {rule}')


def _validate_ranges(config):
    positive = ['DATA.INPUT_SIZE', 'DATA.NUM_FRAMES', 'DATA.NUM_DIVIDE', 'DATA.NUM_CLASSES',
                'TRAIN.EPOCHS', 'TRAIN.LR', 'TRAIN.BATCH_SIZE', 'TRAIN.ACCUMULATION_STEPS',
                'TRAIN.NEW_MODULE_LR_SCALE', 'TEST.NUM_CLIP', 'SAVE_FREQ', 'PRINT_FREQ',
                'MODEL.PROMPT_LAYERS', 'MODEL.MSIM_LAYERS', 'TEST.RELEASE_UAR_SHARDS']
    non_negative = ['DATA.NUM_WORKERS', 'MODEL.MSIM_POS_INIT_STD', 'TRAIN.WARMUP_EPOCHS', 'TRAIN.WEIGHT_DECAY',
                    'TRAIN.CONSISTENCY_EPOCHS', 'TRAIN.CLIP_GRAD', 'TRAIN.MIN_LR_RATIO', 'LOSS.LAMBDA',
                    'AUG.MIXUP', 'AUG.CUTMIX', 'TEST.BATCH_SIZE']
    probabilities = ['DATA.VAL_FRACTION', 'MODEL.ERASE_THRESHOLD', 'MODEL.DROP_PATH_RATE',
                     'AUG.LABEL_SMOOTH', 'AUG.COLOR_JITTER', 'AUG.GRAY_SCALE', 'AUG.MIXUP_SWITCH_PROB']
    for key in positive:
        value = _get(config, key)
        _require(value > 0, key, value, 'must be positive')
    for key in non_negative:
        value = _get(config, key)
        _require(value >= 0, key, value, 'must not be negative')
    for key in probabilities:
        value = _get(config, key)
        _require(0 <= value <= 1, key, value, 'must lie in [0, 1]')
    _require(config.DATA.VAL_FRACTION < 1, 'DATA.VAL_FRACTION', config.DATA.VAL_FRACTION,
             'must be below 1 (some videos must remain for training)')
    _require(len(config.DATA.MEAN) == 3 and len(config.DATA.STD) == 3 and min(config.DATA.STD) > 0,
             'DATA.MEAN/STD', (config.DATA.MEAN, config.DATA.STD), 'need 3 values each, STD positive')


def _validate_choices(config):
    _require(config.DATA.NUM_FRAMES % config.DATA.NUM_DIVIDE == 0, 'DATA.NUM_DIVIDE',
             config.DATA.NUM_DIVIDE, f'must divide DATA.NUM_FRAMES = {config.DATA.NUM_FRAMES}')
    _require(config.TRAIN.OPT_LEVEL in KNOWN_OPT_LEVELS, 'TRAIN.OPT_LEVEL', config.TRAIN.OPT_LEVEL,
             f'must be one of {KNOWN_OPT_LEVELS}')
    _require(config.TRAIN.COMPILE_MODE in KNOWN_COMPILE_MODES, 'TRAIN.COMPILE_MODE', config.TRAIN.COMPILE_MODE,
             f'must be one of {KNOWN_COMPILE_MODES}')
    _require(config.LOSS.CONSISTENCY in KNOWN_CONSISTENCY, 'LOSS.CONSISTENCY', config.LOSS.CONSISTENCY,
             f'must be one of {KNOWN_CONSISTENCY}')
    _require(config.TEST.BEST_METRIC in KNOWN_BEST_METRICS, 'TEST.BEST_METRIC', config.TEST.BEST_METRIC,
             f'must be one of {KNOWN_BEST_METRICS}')
    _require(config.AUG.FMIX_MASK in KNOWN_FMIX_MASKS, 'AUG.FMIX_MASK', config.AUG.FMIX_MASK,
             f'must be one of {KNOWN_FMIX_MASKS}')
    _require(config.DATA.FRAME_ORDER in KNOWN_FRAME_ORDERS, 'DATA.FRAME_ORDER', config.DATA.FRAME_ORDER,
             f'must be one of {KNOWN_FRAME_ORDERS}')
    _require(config.MODEL.HEAD_PRECISION in KNOWN_HEAD_PRECISIONS, 'MODEL.HEAD_PRECISION',
             config.MODEL.HEAD_PRECISION, f'must be one of {KNOWN_HEAD_PRECISIONS}')
    _require(config.TRAIN.TRAILING_MICRO_BATCHES in KNOWN_TRAILING_MICRO_BATCHES, 'TRAIN.TRAILING_MICRO_BATCHES',
             config.TRAIN.TRAILING_MICRO_BATCHES, f'must be one of {KNOWN_TRAILING_MICRO_BATCHES}')
    _require(config.TEST.NUM_CROP in (1, 3), 'TEST.NUM_CROP', config.TEST.NUM_CROP, 'must be 1 or 3')
    _require(config.TRAIN.LR_SCHEDULER == 'cosine', 'TRAIN.LR_SCHEDULER', config.TRAIN.LR_SCHEDULER,
             "only 'cosine' is implemented")
    _require(config.TRAIN.OPTIMIZER == 'adamw', 'TRAIN.OPTIMIZER', config.TRAIN.OPTIMIZER,
             "only 'adamw' is implemented")
    # DATA.SYNTHETIC.* is validated where the dataset is generated (datasets.synthetic).


def _validate_files(config):
    try:
        prompts = read_label_csv(config.DATA.LABEL_LIST)
    except (OSError, ValueError) as error:
        raise ConfigError(f'DATA.LABEL_LIST = {config.DATA.LABEL_LIST!r}: {error}') from error
    _require(len(prompts) == config.DATA.NUM_CLASSES, 'DATA.NUM_CLASSES', config.DATA.NUM_CLASSES,
             f'the label list {config.DATA.LABEL_LIST} has {len(prompts)} rows')
    lists = [('DATA.VAL_FILE', config.DATA.VAL_FILE)]
    if not config.TEST.ONLY_TEST:
        lists.append(('DATA.TRAIN_FILE', config.DATA.TRAIN_FILE))
    for key, path in lists:
        _require(bool(path), key, path, 'is empty: point it at an annotation list')
        _require(os.path.isfile(path), key, path, 'file not found')
    for key in ('MODEL.PRETRAINED', 'MODEL.RESUME'):
        path = _get(config, key)
        _require(not path or os.path.isfile(path), key, path, 'file not found')
    _require(bool(config.OUTPUT), 'OUTPUT', config.OUTPUT, 'is empty: name an output folder')


def _get(config, dotted_key):
    node = config
    for part in dotted_key.split('.'):
        node = node[part]
    return node


def validate_config(config, check_files=True):
    """Check the resolved config before anything heavy starts.

    Args:
        config: the resolved config.
        check_files: also check that the label CSV, the lists and the weight files exist and agree
            with the settings (off for tools that build those files themselves).

    Raises:
        ConfigError: naming the key, its value and the rule it breaks.
    """
    _validate_ranges(config)
    _validate_choices(config)
    if check_files:
        _validate_files(config)
    return config
