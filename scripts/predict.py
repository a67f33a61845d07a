"""Predict the expression in videos with a DK-CLIP checkpoint, and show what the decision rests on.

Each INPUT is a video file (decoded with decord), a folder of frames (``*.jpg``/``*.png``), or an
annotation list (a ``.txt``, ``.lst`` or ``.list`` file in the format of the training lists, relative
paths joined to ``DATA.ROOT``): a list stands for all its videos, whose labels are then reported too.
Every video is read with the test pipeline of the config: ``TEST.NUM_CLIP`` x ``TEST.NUM_CROP`` views
of ``DATA.NUM_FRAMES`` frames, as ``scripts/eval.py`` reads them.

For each video the script prints, and ``--json`` writes:

- the top-k classes of the global, local and fused heads. A head's probabilities are its softmax
  averaged over the test views (docs/model.md, section 16); the fused probabilities are the global plus the
  local ones, renormalised to sum to 1 (the ranking is that of the fused score the evaluation uses).
- the snippet relevance weights r (summing to 1 over the S snippets) and which snippets were erased
  (r below ``MODEL.ERASE_THRESHOLD``), for the FIRST test view (temporal clip 1, crop 1): the view
  whose frames ``--visualize`` draws. Erasing is decided per view, so the JSON also holds every view's.

A missing, unreadable or corrupt input is reported on stderr, naming it; the other inputs are still
predicted, and the exit status is 1.

``--faces`` sends every video through the face front end first (docs/data.md, section 18), in memory:
the main face is followed and cut out as square crops, and the test views are sampled from the frames
that have it. A video without a face, or a still image (not a video), is reported like a missing input.
Each video's record then also holds ``faces`` (its frame count, the frames with the face, the runs of
frames without), ``frame_indices`` count the video's own frames, and ``--visualize`` also draws
``<number>_<name>.faces.png``: the first view's frames with the crop square drawn on each.

Usage, from the repository root::

    python -m scripts.predict --checkpoint output/demo/best.pth [--config configs/demo.yaml]
        clip.mp4 frames/00017 data/synthetic/test.txt [--json predictions.json] [--visualize pictures]
        [--top-k 3] [--batch-size 8] [--device cpu] [--opts TEST.NUM_CLIP 2 TEST.NUM_CROP 3]
    python -m scripts.predict --checkpoint output/demo/best.pth --faces interview.mp4 [--max-gap 15]

Without ``--config`` the config stored in the checkpoint is used (the label CSV it names must exist).
"""
import argparse
import logging
import os
import re
import sys

import cv2
import torch
from torch.utils.data import DataLoader, Dataset

from datasets import AnnotationEntry, AnnotationError, VideoReadError, read_annotation_list
from datasets.decoding import open_video
from datasets.faces import FaceVideo, NoFaceError, add_face_arguments, build_face_detector, face_settings
from datasets.transforms import build_test_transform
from datasets.video_dataset import test_views
from utils.checkpoint import load_checkpoint, load_model_weights
from utils.config import ConfigError, config_for_checkpoint, eval_batch_size, validate_config
from utils.errors import run_command
from utils.files import atomic_write, write_json
from models.builder import build_model_for_run, class_prompt_tokens
from utils.engine import autocast, normalize_videos, resolve_amp_dtype
from utils.logger import close_logging, setup_logging
from utils.metrics import head_scores
from utils.plots import plot_prediction

logger = logging.getLogger(__name__)

# Files read as annotation lists; any other INPUT is a video file or a frame folder.
LIST_EXTENSIONS = ('.txt', '.lst', '.list')
# Where command-line inputs come from, in error messages ("command line:2: clip.mp4: ...").
COMMAND_LINE = 'command line'


def parse_args(argv):
    parser = argparse.ArgumentParser(prog='python -m scripts.predict', description=__doc__.split('\n')[0])
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='video files, frame folders or annotation lists (.txt/.lst/.list)')
    parser.add_argument('--checkpoint', required=True, help='DK-CLIP checkpoint (best.pth, last.pth)')
    parser.add_argument('--config', default='', help="YAML config (default: the checkpoint's own)")
    parser.add_argument('--opts', nargs='+', default=None, help="override settings: 'KEY VALUE' pairs")
    parser.add_argument('--json', default='', help='write the predictions to this JSON file')
    parser.add_argument('--visualize', default='', metavar='DIR', help='write one PNG per video into DIR')
    parser.add_argument('--top-k', type=int, default=3, help='classes listed per head (default 3)')
    parser.add_argument('--batch-size', type=int, default=0,
                        help='videos per forward pass (default: TEST.BATCH_SIZE, else TRAIN.BATCH_SIZE)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='',
                        help='where the model runs (default: cuda when available)')
    parser.add_argument('--faces', action='store_true',
                        help='raw videos: follow the main face and predict on its crops (docs/data.md, section 18)')
    add_face_arguments(parser.add_argument_group('face front end (with --faces)'))
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f'--top-k must be at least 1, got {args.top_k}')
    args.face_settings = face_settings(args) if args.faces else None
    return args


def prediction_config(args, checkpoint):
    """The config to predict with: ``--config`` or the checkpoint's, then ``--opts``; validated.

    The annotation lists of the config are not needed (the inputs come from the command line), so only
    the settings and the label CSV are checked.
    """
    config = config_for_checkpoint(checkpoint['config'], args.config, args.opts)
    config.freeze()
    return validate_config(config, check_files=False)


def select_device(name):
    """``torch.device`` of ``--device`` (default: the first GPU when there is one, else the CPU)."""
    if name == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('error: --device cuda, but torch finds no CUDA device')
    return torch.device(name or ('cuda' if torch.cuda.is_available() else 'cpu'))


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------
def expand_inputs(inputs, config):
    """Turn the INPUT arguments into annotation entries, one per video, in order.

    A video file or frame folder becomes an entry without a label (``label`` None) located at
    ``command line:<position>``; an annotation list is replaced by its entries.

    Returns:
        (entries, errors): the videos to predict, and one message per list that cannot be read.
    """
    entries, errors = [], []
    for position, path in enumerate(inputs, start=1):
        if not path.lower().endswith(LIST_EXTENSIONS):
            entries.append(AnnotationEntry(path, None, None, COMMAND_LINE, position))
            continue
        try:
            entries += read_annotation_list(path, config.DATA.ROOT, config.DATA.NUM_CLASSES)
        except (OSError, AnnotationError) as error:
            errors.append(f'{COMMAND_LINE}:{position}: {error}')
    return entries, errors


class PredictionClips(Dataset):
    """The test views of each entry, or the reason they cannot be read (a failed video does not stop
    the others). With ``face_settings`` (``--faces``) raw videos go through the face front end first:
    the views are sampled from the frames with the face and cut from their crops.

    Items are dicts: ``position`` (index into ``entries``), ``videos`` uint8 ``[V, T, 3, S, S]`` (view
    ``clip * TEST.NUM_CROP + crop``) and ``frame_indices`` ``[TEST.NUM_CLIP, T]`` (the source frames of
    each temporal view), or ``error`` (a message naming the file and where it was listed). With faces,
    also ``faces`` (``FaceVideo.summary``) and, with ``draw_faces``, ``face_picture``: the first view's
    frames with their crop squares, one snippet per row (RGB).
    """

    def __init__(self, entries, config, face_settings=None, draw_faces=False):
        self.entries, self.config = entries, config
        self.face_settings, self.draw_faces = face_settings, draw_faces
        self.transform = build_test_transform(config)

    def __len__(self):
        return len(self.entries)

    def open(self, entry):
        """The entry's frames: its decoder, or its face crops (``FaceVideo``)."""
        order = self.config.DATA.FRAME_ORDER
        if self.face_settings is None:
            return open_video(entry, order)
        return FaceVideo(entry, build_face_detector(self.face_settings), self.face_settings, order)

    def __getitem__(self, position):
        try:
            video = self.open(self.entries[position])
        except (VideoReadError, NoFaceError) as error:
            return {'position': position, 'error': str(error)}
        config = self.config
        videos, views = test_views(video, config.DATA.NUM_FRAMES, config.TEST.NUM_CLIP, self.transform)
        item = {'position': position, 'videos': videos, 'frame_indices': views}
        if self.face_settings is not None:
            item['frame_indices'] = torch.from_numpy(video.source_frames[views.numpy()])  # frames of the video
            item['faces'] = video.summary()
            if self.draw_faces:
                frames_per_snippet = config.DATA.NUM_FRAMES // config.DATA.NUM_DIVIDE
                item['face_picture'] = video.picture(item['frame_indices'][0].numpy(), frames_per_snippet)
        return item


def build_prediction_loader(entries, config, batch_size, faces=None, draw_faces=False):
    """Batches (lists of :class:`PredictionClips` items; through the face front end when ``faces`` holds
    ``FaceSettings``) of the entries, in order."""
    batch_size = batch_size or eval_batch_size(config)
    clips = PredictionClips(entries, config, faces, draw_faces)
    return DataLoader(clips, batch_size=batch_size, shuffle=False, num_workers=config.DATA.NUM_WORKERS,
                      collate_fn=list)


# ----------------------------------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict_batch(model, videos, text_tokens, config, device, amp_dtype=None):
    """Class probabilities of the three heads and the snippet relevance of a batch of videos.

    Args:
        model: DK-CLIP in eval mode.
        videos: uint8 ``[B, V, T, 3, H, W]``, the V test views of each video.
        text_tokens: ``[K, 77]`` class-prompt tokens on ``device``.
        config: the run's config (normalisation).
        device: where the model runs.
        amp_dtype: autocast dtype or None (fp32).

    Returns:
        dict of CPU tensors: ``global``, ``local``, ``fused`` ``[B, K]`` probabilities (``local`` and
        ``fused`` only with ``MODEL.USE_LOCAL``), each summing to 1; ``relevance`` ``[B, V, S]`` and
        ``erased`` ``[B, V, S]`` bool.
    """
    num_videos, num_views = videos.shape[:2]
    videos = normalize_videos(videos.flatten(0, 1).to(device, non_blocking=True), config)  # [B * V, T, 3, H, W]
    with autocast(device, amp_dtype):
        details = model(videos, text_tokens, return_details=True)
    scores = head_scores(details['logits_global'], details['logits_local'], num_views)  # sums over views
    # global and local: view sums of softmax, divided by V; fused: their sum, renormalised to 1
    probabilities = {head: value / value.sum(dim=-1, keepdim=True) for head, value in scores.items()}
    snippets = {'relevance': details['relevance'].float(), 'erased': details['erased']}  # [B * V, S]
    snippets = {name: value.unflatten(0, (num_videos, num_views)) for name, value in snippets.items()}  # [B, V, S]
    return {name: value.cpu() for name, value in {**probabilities, **snippets}.items()}


def top_classes(probabilities, class_names, top_k):
    """The ``top_k`` most probable classes: ``[{'class', 'index', 'probability'}, ...]``, best first."""
    values, indices = probabilities.topk(min(top_k, len(class_names)))
    return [{'class': class_names[index], 'index': index, 'probability': value}
            for value, index in zip(values.tolist(), indices.tolist())]


def video_record(entry, item, outputs, row, class_names, top_k):
    """The JSON record of one video (the fields are listed in the module docstring)."""
    heads = {head: {'probabilities': outputs[head][row].tolist(),
                    'top_k': top_classes(outputs[head][row], class_names, top_k)}
             for head in ('global', 'local', 'fused') if head in outputs}
    relevance, erased = outputs['relevance'][row], outputs['erased'][row]  # [V, S]
    return {
        'path': entry.path,
        'listed_at': entry.location,
        'label': entry.label,
        'label_name': None if entry.label is None else class_names[entry.label],
        'prediction': heads['fused' if 'fused' in heads else 'global']['top_k'][0]['class'],
        'heads': heads,
        'relevance': relevance[0].tolist(),
        'erased': erased[0].tolist(),
        'relevance_per_view': relevance.tolist(),
        'erased_per_view': erased.tolist(),
        'frame_indices': item['frame_indices'][0].tolist(),
        **({'faces': item['faces']} if 'faces' in item else {}),
    }


def format_record(record):
    """Human-readable lines of a video record, for the console."""
    label = f' (label: {record["label_name"]})' if record['label_name'] is not None else ''
    lines = [f'{record["path"]}{label}: {record["prediction"]}']
    for head, report in record['heads'].items():
        ranked = ', '.join(f'{entry["class"]} {entry["probability"]:.3f}' for entry in report['top_k'])
        lines.append(f'  {head:<6} {ranked}')
    snippets = ' '.join(f'{weight:.3f}' + ('*' if erased else '')
                        for weight, erased in zip(record['relevance'], record['erased']))
    lines.append(f'  snippet relevance (first view; * erased): {snippets}')
    if 'faces' in record:
        lines.append(face_line(record['faces']))
    return '\n'.join(lines)


def face_line(faces):
    """The console line of a ``--faces`` record: frames with the face and the runs without (1-based)."""
    absent = ', '.join(f'{first + 1}-{last + 1}' for first, last in faces['absences'])
    return (f'  face in {faces["frames_with_face"]} of {faces["frames"]} frames'
            + (f' (no face in frames {absent}: left out)' if absent else ''))


def picture_path(folder, number, path):
    """``folder/<number>_<name>.png``: numbered, since frame folders of different lists share names."""
    name = re.sub(r'[^\w.-]+', '_', os.path.basename(os.path.normpath(path)))
    return os.path.join(folder, f'{number:04d}_{name}.png')


def draw_faces(picture, folder, number, path):
    """Write ``--faces``' picture of a video's frames and crop squares as ``<number>_<name>.faces.png``."""
    destination = picture_path(folder, number, path)[:-len('.png')] + '.faces.png'
    _, data = cv2.imencode('.png', cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    with atomic_write(destination, 'wb') as f:
        f.write(data.tobytes())
    return destination


def draw_record(record, frames, class_names, folder, number):
    """Write the picture of one video (first view's frames, relevance, erasing, probabilities)."""
    probabilities = {head: report['probabilities'] for head, report in record['heads'].items()}
    label = f' | label: {record["label_name"]}' if record['label_name'] is not None else ''
    title = f'{record["path"]}\npredicted: {record["prediction"]}{label}'
    return plot_prediction(frames, record['relevance'], record['erased'], probabilities, class_names,
                           picture_path(folder, number, record['path']), title=title,
                           frame_indices=record['frame_indices'])


# ----------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------
def report_error(message, errors):
    """Print an input's error on stderr and keep it for the JSON."""
    print(f'error: {message}', file=sys.stderr, flush=True)
    errors.append(message)


def predict_entries(model, entries, text_tokens, class_names, config, args, device, errors):
    """Predict every entry, printing each result; returns the records (unreadable videos are reported
    and their messages appended to ``errors``)."""
    records = []
    amp_dtype = resolve_amp_dtype(config.TRAIN.OPT_LEVEL, device)
    for batch in build_prediction_loader(entries, config, args.batch_size, args.face_settings,
                                         draw_faces=bool(args.visualize)):
        for item in batch:
            if 'error' in item:
                report_error(item['error'], errors)
        readable = [item for item in batch if 'error' not in item]
        if not readable:
            continue
        videos = torch.stack([item['videos'] for item in readable])  # [B, V, T, 3, S, S]
        outputs = predict_batch(model, videos, text_tokens, config, device, amp_dtype)
        for row, item in enumerate(readable):
            record = video_record(entries[item['position']], item, outputs, row, class_names, args.top_k)
            records.append(record)
            print(format_record(record), flush=True)
            if args.visualize:
                draw_record(record, item['videos'][0], class_names, args.visualize, len(records))
                if 'face_picture' in item:
                    draw_faces(item['face_picture'], args.visualize, len(records), record['path'])
    return records


def run(args):
    """Load the checkpoint, predict the inputs and write the JSON; returns the exit status."""
    checkpoint = load_checkpoint(args.checkpoint)
    config = prediction_config(args, checkpoint)
    device = select_device(args.device)
    if args.face_settings:
        build_face_detector(args.face_settings)  # a missing dlib or model file stops here, before any video
    entries, list_errors = expand_inputs(args.inputs, config)
    errors = []
    for message in list_errors:
        report_error(message, errors)
    model = build_model_for_run(config, device, checkpoint)
    load_model_weights(model, checkpoint, args.checkpoint)
    model.eval()
    text_tokens, class_names = class_prompt_tokens(config, device)
    if len(class_names) != config.DATA.NUM_CLASSES:
        raise ConfigError(f'DATA.LABEL_LIST {config.DATA.LABEL_LIST} has {len(class_names)} rows, '
                          f'DATA.NUM_CLASSES is {config.DATA.NUM_CLASSES}')
    records = predict_entries(model, entries, text_tokens, class_names, config, args, device, errors)
    if args.json:
        write_json(args.json, {
            'checkpoint': args.checkpoint, 'class_names': class_names,
            'views': {'clips': config.TEST.NUM_CLIP, 'crops': config.TEST.NUM_CROP},
            'num_frames': config.DATA.NUM_FRAMES, 'num_snippets': config.DATA.NUM_DIVIDE,
            'erase_threshold': config.MODEL.ERASE_THRESHOLD, 'videos': records, 'errors': errors})
        logger.info('written %s', args.json)
    logger.info('%d videos predicted, %d inputs failed', len(records), len(errors))
    return 1 if errors else 0


def main(argv=None):
    """Command-line entry point; returns the exit status (1 when any input could not be predicted)."""
    args = parse_args(argv)
    setup_logging(None)
    try:
        return run(args)
    finally:
        close_logging()


if __name__ == '__main__':
    sys.exit(run_command(main))
