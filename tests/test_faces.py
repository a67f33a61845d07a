"""The face front end on real faces: scikit-image's photograph of Eileen Collins (``data.astronaut()``)
moved and scaled across the frames of small mp4 videos; a real photograph without a face; a face that
leaves the picture. Through the library, ``scripts/prepare_faces.py`` and ``scripts/predict.py --faces``."""
import contextlib
import io
import json
import os

import cv2
import numpy as np
import pytest

from conftest import tiny_clip_state_dict, tiny_config
from datasets.annotations import AnnotationEntry, read_annotation_list
from datasets.decoding import list_frame_files, open_video
from datasets.faces import FaceSettings, build_face_detector, follow_face_in_video
from datasets.faces.crops import crop_square
from datasets.faces.detectors import build_detector
from datasets.faces.moving_photo import ASTRONAUT_FACE, drifting_face_boxes, moving_photo_frames
from datasets.faces.track import follow_face
from datasets.synthetic import write_frame_folder, write_mp4
from models.builder import build_model
from scripts import benchmark
from scripts import predict as predict_script
from scripts import prepare_faces
from utils.checkpoint import save_checkpoint
from utils.errors import InputFileError, UserError

skimage_data = pytest.importorskip('skimage.data')

FRAME_SIZE = (320, 180)  # width, height
NUM_FRAMES = 32
HIDDEN_FRAMES = range(12, 16)  # a hand over the face: a short miss, filled
SETTINGS = FaceSettings()


def hide_face(frame, box):
    """Cover the face with a flat patch, as a hand would."""
    centre_x, centre_y, side = box
    top, left = int(centre_y - 0.7 * side), int(centre_x - 0.7 * side)
    frame[max(top, 0):int(centre_y + 0.7 * side), max(left, 0):int(centre_x + 0.7 * side)] = (170, 140, 120)


def face_video(path):
    """The astronaut drifting right and down and growing, her face hidden in ``HIDDEN_FRAMES``."""
    boxes = drifting_face_boxes(NUM_FRAMES, FRAME_SIZE, (0.35, 0.45), (0.6, 0.55), (62, 78))
    frames = moving_photo_frames(skimage_data.astronaut(), ASTRONAUT_FACE, boxes, FRAME_SIZE)
    for index in HIDDEN_FRAMES:
        hide_face(frames[index], boxes[index])
    write_mp4(path, frames)
    return boxes, frames


def leaving_video(path):
    """The astronaut leaving the picture to the right, half-way through 32 frames."""
    boxes = drifting_face_boxes(NUM_FRAMES, FRAME_SIZE, (0.4, 0.5), (1.6, 0.5), (70, 70))
    write_mp4(path, moving_photo_frames(skimage_data.astronaut(), ASTRONAUT_FACE, boxes, FRAME_SIZE))
    return boxes


def faceless_video(path):
    """A real photograph without a face (a cup of coffee), drifting."""
    boxes = drifting_face_boxes(16, FRAME_SIZE, (0.4, 0.5), (0.6, 0.5), (150, 170))
    write_mp4(path, moving_photo_frames(skimage_data.coffee(), (300.0, 200.0, 300.0), boxes, FRAME_SIZE))


@pytest.fixture(scope='module')
def material(tmp_path_factory):
    """The videos (two in a folder), a frame folder, a still image and a label CSV."""
    root = tmp_path_factory.mktemp('faces')
    (root / 'recordings').mkdir()
    paths = {name: str(root / 'recordings' / f'{name}.mp4') for name in ('face', 'faceless')}
    paths['leaving'] = str(root / 'leaving.mp4')
    face_boxes, face_frames = face_video(paths['face'])
    leaving_boxes = leaving_video(paths['leaving'])
    faceless_video(paths['faceless'])
    paths['frames'] = str(root / 'webcam')
    write_frame_folder(paths['frames'], face_frames[:12])
    paths['still'] = str(root / 'portrait.png')
    cv2.imwrite(paths['still'], cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    paths['labels'] = str(root / 'labels.csv')
    with open(paths['labels'], 'w') as f:
        f.write('video,label\nface.mp4,happy\nleaving,surprise\nwebcam,3\nfaceless.mp4,fear\n')
    return {'root': root, 'paths': paths, 'face_boxes': face_boxes, 'leaving_boxes': leaving_boxes}


def track_of(path, settings=SETTINGS):
    video = open_video(AnnotationEntry(path, None, None, 'test', 1))
    return follow_face_in_video(video, build_face_detector(settings), settings)


def crop_offsets(track, true_boxes, frames):
    """Distance of the true face centre from each crop's centre, in crop sides: ``[n]``."""
    squares = track.squares[frames]
    centres = squares[:, :2] + squares[:, 2:] / 2
    return np.hypot(*(true_boxes[frames, :2] - centres).T) / squares[:, 2]


# ----------------------------------------------------------------------------------------------------
# The library
# ----------------------------------------------------------------------------------------------------
def test_crops_are_centred_on_the_face_in_every_frame_even_under_a_hand(material):
    track = track_of(material['paths']['face'])
    assert list(track.face_frames) == list(range(NUM_FRAMES))  # the short miss is filled
    assert crop_offsets(track, material['face_boxes'], track.face_frames).max() < 0.1
    sides = track.squares[:, 2] / (SETTINGS.margin * material['face_boxes'][:, 2])
    assert 0.8 < sides.min() and sides.max() < 1.25  # the crop follows the face's growth


def test_a_face_leaving_the_picture_ends_its_crops_and_is_reported(material):
    boxes = material['leaving_boxes']
    track = track_of(material['paths']['leaving'])
    width = FRAME_SIZE[0]
    fully_inside = np.flatnonzero(boxes[:, 0] + boxes[:, 2] / 2 < width - 5)
    gone = np.flatnonzero(boxes[:, 0] - boxes[:, 2] / 2 > width)
    assert set(fully_inside) <= set(track.face_frames)
    assert not set(gone) & set(track.face_frames)
    assert track.absences == [(track.face_frames[-1] + 1, NUM_FRAMES - 1)]
    assert crop_offsets(track, boxes, fully_inside).max() < 0.1


def test_the_largest_most_persistent_face_is_followed_and_long_misses_are_left_out():
    big, small = np.array([[100.0, 90, 80, 1]]), np.array([[250.0, 90, 40, 1]])
    detections = {frame: np.concatenate([big, small]) for frame in range(0, 10)}
    detections.update({frame: small for frame in range(10, 20)})  # the big face is missed a while
    detections.update({frame: np.concatenate([big, small]) for frame in range(20, 60)})
    for frame in range(30, 34):  # a larger face passing by
        detections[frame] = np.concatenate([detections[frame], [[300.0, 100, 160, 1]]])
    detections.update({frame: np.zeros((0, 4)) for frame in range(60, 64)})  # then lost for good
    boxes = follow_face(detections, 64, max_gap=5, smooth_sigma=2)
    followed = ~np.isnan(boxes[:, 0])
    assert followed[:10].all() and followed[20:60].all()
    assert not followed[10:20].any() and not followed[60:].any()  # 10 frames > max_gap: left out
    np.testing.assert_allclose(boxes[followed], np.repeat(big[:, :3], followed.sum(), axis=0))
    filled = follow_face({frame: big for frame in range(0, 64, 8)}, 64, max_gap=7, smooth_sigma=0)
    assert not np.isnan(filled[:57]).any() and np.isnan(filled[57:, 0]).all()  # nothing after the last


def test_smoothing_removes_the_detectors_jitter_but_follows_motion():
    frames = np.arange(60)
    truth = np.stack([100 + 2.0 * frames, np.full(60, 80.0), np.full(60, 50.0)], axis=1)
    jitter = np.random.default_rng(0).normal(0, 3, truth.shape)
    detections = {frame: np.append(truth[frame] + jitter[frame], 1.0)[None] for frame in frames}
    boxes = follow_face(detections, 60, max_gap=5, smooth_sigma=SETTINGS.smooth_sigma)
    inner = slice(8, 52)  # away from the ends, where fewer detections are averaged
    assert np.abs(boxes[inner] - truth[inner]).mean() < 0.5 * np.abs(jitter[inner]).mean()


def test_the_yunet_option_names_a_missing_or_unreadable_model_file(tmp_path):
    with pytest.raises(InputFileError, match='missing.onnx'):
        build_detector('yunet', 640, str(tmp_path / 'missing.onnx'))
    (tmp_path / 'notes.onnx').write_text('not a network')
    with pytest.raises(UserError, match=r'notes.onnx: OpenCV cannot load it as a YuNet face detector'):
        build_detector('yunet', 640, str(tmp_path / 'notes.onnx'))


def test_a_crop_past_the_frames_edge_is_padded_and_keeps_the_face_centred():
    frame = np.full((100, 200, 3), 200, dtype=np.uint8)
    crop = crop_square(frame, (-50, 0, 100), size=50)  # half of the square is left of the frame
    assert crop.shape == (50, 50, 3)
    assert (crop[:, :24] == 0).all() and (crop[:, 26:] == 200).all()


# ----------------------------------------------------------------------------------------------------
# scripts/prepare_faces.py
# ----------------------------------------------------------------------------------------------------
def run_main(main, argv):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(argv)
    return status, stdout.getvalue(), stderr.getvalue()


def prepare(material, output, *options):
    """prepare_faces on the folder of recordings, the leaving face and the frame folder, with labels."""
    paths = material['paths']
    argv = [os.path.dirname(paths['face']), paths['leaving'], paths['frames'], '--output', output,
            '--labels', paths['labels'], *options]
    status, stdout, stderr = run_main(prepare_faces.main, argv)
    return {'status': status, 'stdout': stdout, 'stderr': stderr, 'output': output}


@pytest.fixture(scope='module')
def prepared(material):
    return prepare(material, str(material['root'] / 'crops'))


def test_prepare_writes_a_list_that_main_reads(prepared):
    entries = read_annotation_list(os.path.join(prepared['output'], 'videos.txt'), prepared['output'], 7)
    listed = {os.path.basename(entry.path): entry for entry in entries}
    assert {name: entry.label for name, entry in listed.items()} == {'face': 0, 'leaving': 4, 'webcam': 3}
    for entry in entries:
        assert entry.num_frames == len(list_frame_files(entry.path))
    assert listed['face'].num_frames == NUM_FRAMES and listed['webcam'].num_frames == 12
    assert 0 < listed['leaving'].num_frames < NUM_FRAMES


def test_prepare_names_frames_zero_padded_after_the_source_frames(prepared):
    names = sorted(os.listdir(os.path.join(prepared['output'], 'face')))
    assert names == [f'{index:05d}.jpg' for index in range(1, NUM_FRAMES + 1)]
    crop = cv2.imread(os.path.join(prepared['output'], 'face', names[0]))
    assert crop.shape == (SETTINGS.size, SETTINGS.size, 3)


def test_prepare_names_the_faceless_video_and_fails_at_the_end(prepared, material):
    assert prepared['status'] == 1
    errors = [line for line in prepared['stderr'].splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and material['paths']['faceless'] in errors[0] and 'no face' in errors[0]
    assert not os.path.exists(os.path.join(prepared['output'], 'faceless'))


def test_prepare_reports_frames_faces_and_the_face_leaving(prepared, material):
    lines = prepared['stdout'].splitlines()
    face_line = next(line for line in lines if line.startswith(material['paths']['face']))
    assert f'{NUM_FRAMES} frames read, {NUM_FRAMES} with a face' in face_line
    leaving = lines.index(next(line for line in lines if line.startswith(material['paths']['leaving'])))
    assert lines[leaving + 1].strip().startswith('no face in frames') and f'-{NUM_FRAMES} ' in lines[leaving + 1]


def written_files(output):
    """``{path relative to output: file content}`` of the list and the crops' names."""
    files = {name: None for name in os.listdir(output)}
    with open(os.path.join(output, 'videos.txt')) as f:
        files['videos.txt'] = f.read()
    return {**files, **{name: sorted(os.listdir(os.path.join(output, name))) for name in files if files[name] is None}}


@pytest.mark.slow
def test_prepare_with_worker_processes_writes_the_same(prepared, material):
    # the worker processes are fresh interpreters (a few seconds each to import torch and the decoders)
    parallel = prepare(material, str(material['root'] / 'crops_parallel'), '--workers', '2')
    assert parallel['status'] == prepared['status'] and parallel['stderr'] == prepared['stderr']
    assert written_files(parallel['output']) == written_files(prepared['output'])


def test_prepare_refuses_a_still_image_and_a_bad_label(material, tmp_path):
    status, _, stderr = run_main(prepare_faces.main, [material['paths']['still'], '--output', str(tmp_path)])
    assert status == 1 and 'portrait.png: a still image, not a video' in stderr
    labels = tmp_path / 'bad.csv'
    labels.write_text('face.mp4,grumpy\n')
    with pytest.raises(prepare_faces.PreparationError, match=r'bad.csv:1: unknown class name'):
        prepare_faces.main([material['paths']['face'], '--output', str(tmp_path), '--labels', str(labels)])


# ----------------------------------------------------------------------------------------------------
# scripts/predict.py --faces
# ----------------------------------------------------------------------------------------------------
def test_predict_faces_predicts_the_face_video_and_names_the_others(material, tmp_path):
    config = tiny_config(TEST__NUM_CLIP=2)
    checkpoint = str(tmp_path / 'best.pth')
    save_checkpoint({'model': build_model(config, tiny_clip_state_dict()).state_dict(), 'epoch': 1, 'step': 1,
                     'config': config.dump()}, checkpoint)
    paths, json_path, pictures = material['paths'], str(tmp_path / 'predictions.json'), str(tmp_path / 'pictures')
    argv = ['--checkpoint', checkpoint, '--device', 'cpu', '--faces', paths['face'], paths['faceless'],
            paths['still'], '--json', json_path, '--visualize', pictures]
    status, stdout, _ = run_main(predict_script.main, argv)
    with open(json_path) as f:
        result = json.load(f)
    video, = result['videos']
    assert status == 1 and video['path'] == paths['face'] and video['prediction'] in result['class_names']
    assert video['faces'] == {'frames': NUM_FRAMES, 'frames_with_face': NUM_FRAMES, 'absences': []}
    assert f'face in {NUM_FRAMES} of {NUM_FRAMES} frames' in stdout
    faceless, still = result['errors']
    assert paths['faceless'] in faceless and 'no face' in faceless
    assert paths['still'] in still and 'not a video' in still
    assert sorted(os.listdir(pictures)) == ['0001_face.mp4.faces.png', '0001_face.mp4.png']


def test_the_faces_benchmark_runs_on_a_short_video(capsys):
    assert benchmark.main(['faces', '--frames', '12', '--repeats', '1', '--detect-every', '2']) == 0
    assert '12/12 frames with a face' in capsys.readouterr().out
