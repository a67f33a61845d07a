"""scripts/predict.py on a tiny random DK-CLIP and tiny synthetic videos; the evaluation pictures."""
import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from conftest import tiny_clip_state_dict, tiny_config, write_release_checkpoint
from datasets import build_dataloaders
from datasets.synthetic import draw_clips, sample_clip_parameters, write_frame_folder, write_mp4
from models.builder import build_model
from scripts import predict as predict_script
from utils.checkpoint import save_checkpoint
from utils.engine import evaluate
from utils.metrics import evaluate_heads
from utils.plots import PREDICTION_DPI, prediction_figure_size, save_evaluation_plots

NUM_CLIPS = 2  # temporal test views, so that the per-view averaging is exercised
HEADS = ('global', 'local', 'fused')


def write_videos(root, config):
    """Three tiny synthetic clips (an mp4, two frame folders), a list of two of them, and two bad inputs."""
    synthetic = config.DATA.SYNTHETIC
    rng = np.random.default_rng(0)
    params = sample_clip_parameters(rng, [0, 4, 6], synthetic)
    clips = draw_clips(params, synthetic.CLIP_LENGTH, synthetic.FRAME_SIZE, 4.0, synthetic.NOISE_FRAMES, rng)
    os.makedirs(os.path.join(root, 'videos'))
    write_mp4(os.path.join(root, 'videos', 'smile.mp4'), clips[0])
    write_frame_folder(os.path.join(root, 'frames', 'open'), clips[1])
    write_frame_folder(os.path.join(root, 'frames', 'still'), clips[2])
    with open(os.path.join(root, 'videos', 'corrupt.mp4'), 'wb') as f:
        f.write(os.urandom(2048))
    list_file = os.path.join(root, 'list.txt')
    with open(list_file, 'w') as f:
        f.write(f'frames/still {synthetic.CLIP_LENGTH} 6\nvideos/smile.mp4 {synthetic.CLIP_LENGTH} 0\n'
                f'videos/corrupt.mp4 {synthetic.CLIP_LENGTH} 3\n')
    return {'mp4': os.path.join(root, 'videos', 'smile.mp4'), 'folder': os.path.join(root, 'frames', 'open'),
            'list': list_file, 'missing': os.path.join(root, 'missing.mp4')}


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A checkpoint of a random tiny model (weights as utils/checkpoint.py saves them) and the inputs."""
    root = str(tmp_path_factory.mktemp('predict'))
    config = tiny_config(DATA__ROOT=root, DATA__SYNTHETIC__CLIP_LENGTH=12, DATA__SYNTHETIC__FRAME_SIZE=40,
                         DATA__SYNTHETIC__NOISE_FRAMES=3, TEST__NUM_CLIP=NUM_CLIPS, TEST__BATCH_SIZE=2)
    model = build_model(config, tiny_clip_state_dict())
    checkpoint = os.path.join(root, 'best.pth')
    save_checkpoint({'model': model.state_dict(), 'epoch': 1, 'step': 1, 'config': config.dump()}, checkpoint)
    return {'root': root, 'config': config, 'model': model.eval(), 'checkpoint': checkpoint,
            'inputs': write_videos(root, config)}


def run_predict(setup, inputs, *options):
    """``main`` with captured stdout and stderr: (exit status, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ['--checkpoint', setup['checkpoint'], *inputs, '--device', 'cpu', *options]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = predict_script.main(argv)
    return status, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope='module')
def prediction(setup):
    """One run over every kind of input, good and bad, with --json and --visualize."""
    inputs = setup['inputs']
    json_path = os.path.join(setup['root'], 'out', 'predictions.json')
    pictures = os.path.join(setup['root'], 'pictures')
    status, stdout, stderr = run_predict(
        setup, [inputs['mp4'], inputs['missing'], inputs['folder'], inputs['list']],
        '--json', json_path, '--visualize', pictures, '--top-k', '2')
    with open(json_path) as f:
        result = json.load(f)
    return {'status': status, 'stdout': stdout, 'stderr': stderr, 'json': result, 'pictures': pictures}


def test_every_readable_video_is_predicted_in_order(prediction, setup):
    inputs, root = setup['inputs'], setup['root']
    videos = prediction['json']['videos']
    assert [video['path'] for video in videos] == [inputs['mp4'], inputs['folder'],
                                                   os.path.join(root, 'frames/still'),
                                                   os.path.join(root, 'videos/smile.mp4')]
    assert [video['label'] for video in videos] == [None, None, 6, 0]
    assert videos[2]['listed_at'] == f'{inputs["list"]}:1'
    assert videos[2]['label_name'] == prediction['json']['class_names'][6]


def test_missing_and_corrupt_inputs_fail_clearly_without_stopping_the_others(prediction, setup):
    inputs = setup['inputs']
    assert prediction['status'] == 1
    errors = prediction['json']['errors']
    assert len(errors) == 2
    missing, corrupt = errors
    assert inputs['missing'] in missing and 'command line:2' in missing and 'not found' in missing
    assert 'corrupt.mp4' in corrupt and f'{inputs["list"]}:3' in corrupt and 'cannot open the video' in corrupt
    stderr_lines = prediction['stderr'].splitlines()
    assert [line for line in stderr_lines if line.startswith('error: ')] == [f'error: {e}' for e in errors]
    assert prediction['stdout'].count('snippet relevance') == 4  # the four readable videos were printed


def test_json_has_the_documented_fields(prediction, setup):
    config, result = setup['config'], prediction['json']
    assert result['views'] == {'clips': NUM_CLIPS, 'crops': 1}
    assert result['num_snippets'] == config.DATA.NUM_DIVIDE and result['num_frames'] == config.DATA.NUM_FRAMES
    assert len(result['class_names']) == config.DATA.NUM_CLASSES
    for video in result['videos']:
        assert set(video['heads']) == set(HEADS)
        for report in video['heads'].values():
            probabilities = torch.tensor(report['probabilities'])
            assert probabilities.shape == (config.DATA.NUM_CLASSES,)
            assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)
            best = probabilities.topk(2)
            assert [entry['index'] for entry in report['top_k']] == best.indices.tolist()
            assert [entry['class'] for entry in report['top_k']] == [result['class_names'][i]
                                                                     for i in best.indices.tolist()]
        assert video['prediction'] == video['heads']['fused']['top_k'][0]['class']
        assert len(video['relevance']) == config.DATA.NUM_DIVIDE == len(video['erased'])
        assert sum(video['relevance']) == pytest.approx(1.0, abs=1e-5)
        assert video['erased'] == [weight < config.MODEL.ERASE_THRESHOLD for weight in video['relevance']]
        assert np.array(video['relevance_per_view']).shape == (NUM_CLIPS, config.DATA.NUM_DIVIDE)
        assert video['relevance_per_view'][0] == video['relevance']
        assert len(video['frame_indices']) == config.DATA.NUM_FRAMES


def naive_prediction(model, views, text_tokens, config):
    """Reference: one forward pass per view, softmax probabilities averaged by hand."""
    mean = torch.tensor(config.DATA.MEAN).view(3, 1, 1)
    std = torch.tensor(config.DATA.STD).view(3, 1, 1)
    global_sum = local_sum = 0
    relevance = []
    with torch.no_grad():
        for view in views:  # [T, 3, S, S] uint8
            details = model(((view.float() - mean) / std)[None], text_tokens, return_details=True)
            global_sum = global_sum + details['logits_global'][0].softmax(-1)
            local_sum = local_sum + details['logits_local'][0].sum(0).softmax(-1)
            relevance.append(details['relevance'][0])
    num_views = len(views)
    fused = (global_sum + local_sum) / (2 * num_views)
    return {'global': global_sum / num_views, 'local': local_sum / num_views, 'fused': fused,
            'relevance': torch.stack(relevance)}


def test_probabilities_match_a_per_view_reference(prediction, setup):
    config, model = setup['config'], setup['model']
    text_tokens, _ = predict_script.class_prompt_tokens(config, torch.device('cpu'))
    entries, _ = predict_script.expand_inputs([setup['inputs']['mp4'], setup['inputs']['folder']], config)
    clips = predict_script.PredictionClips(entries, config)
    for position, video in enumerate(prediction['json']['videos'][:2]):
        views = clips[position]['videos']
        assert views.shape[:2] == (NUM_CLIPS, config.DATA.NUM_FRAMES)
        reference = naive_prediction(model, views, text_tokens, config)
        for head in HEADS:
            torch.testing.assert_close(torch.tensor(video['heads'][head]['probabilities']), reference[head],
                                       rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.tensor(video['relevance_per_view']), reference['relevance'],
                                   rtol=1e-4, atol=1e-6)


def test_list_predictions_agree_with_the_evaluation_engine(prediction, setup):
    # the engine's evaluate() sums softmax over the same views; the readable entries of the list
    root = setup['root']
    good_list = os.path.join(root, 'good.txt')
    with open(good_list, 'w') as f:
        f.write('frames/still 12 6\nvideos/smile.mp4 12 0\n')
    config = setup['config'].clone()
    config.defrost()
    config.DATA.VAL_FILE, config.TEST.ONLY_TEST = good_list, True
    config.freeze()
    text_tokens, _ = predict_script.class_prompt_tokens(config, torch.device('cpu'))
    evaluation = evaluate(setup['model'], build_dataloaders(config).test, text_tokens, config, torch.device('cpu'),
                          amp_dtype=None)
    for row, video in zip(evaluation.indices.tolist(), prediction['json']['videos'][2:]):
        for head in HEADS:
            expected = evaluation.scores[head][row] / evaluation.scores[head][row].sum()
            torch.testing.assert_close(torch.tensor(video['heads'][head]['probabilities']), expected)


def test_pictures_decode_with_the_expected_size(prediction, setup):
    config = setup['config']
    names = sorted(os.listdir(prediction['pictures']))
    assert names == ['0001_smile.mp4.png', '0002_open.png', '0003_still.png', '0004_smile.mp4.png']
    frames_per_snippet = config.DATA.NUM_FRAMES // config.DATA.NUM_DIVIDE
    width, height = prediction_figure_size(config.DATA.NUM_DIVIDE, frames_per_snippet, config.DATA.NUM_CLASSES)
    for name in names:
        image = imread(os.path.join(prediction['pictures'], name))
        assert image.shape == (round(height * PREDICTION_DPI), round(width * PREDICTION_DPI), 4)
        assert image[..., :3].std() > 0.05  # something was drawn


def test_global_head_only_without_the_local_branch(setup, tmp_path):
    json_path = str(tmp_path / 'global.json')
    status, _, stderr = run_predict(setup, [setup['inputs']['folder']], '--json', json_path,
                                    '--opts', 'MODEL.USE_LOCAL', 'False', 'TEST.NUM_CLIP', '1')
    assert status == 0 and 'error' not in stderr
    with open(json_path) as f:
        video, = json.load(f)['videos']
    assert list(video['heads']) == ['global'] and not any(video['erased'])
    assert sum(video['heads']['global']['probabilities']) == pytest.approx(1.0, abs=1e-5)


def test_evaluation_pictures(tmp_path):
    class_names = ['happiness', 'sadness', 'neutral', 'anger']
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 1, 3, 3, 0])  # class 2 absent: its recall bar reads n/a
    scores = {head: torch.rand(len(labels), len(class_names), generator=generator) for head in HEADS}
    heads = evaluate_heads(scores, labels, len(class_names))
    paths = save_evaluation_plots(heads, class_names, str(tmp_path / 'best.eval'), 'epoch 3')
    assert [os.path.basename(path) for path in paths] == [
        'best.eval.confusion_global.png', 'best.eval.confusion_local.png', 'best.eval.confusion_fused.png',
        'best.eval.recall.png']
    for path in paths:
        image = imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 100 and image[..., :3].std() > 0.05
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(path) for path in paths)  # no temporaries


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_matches_cpu(prediction, setup, tmp_path):
    json_path = str(tmp_path / 'cuda.json')
    run_predict(setup, [setup['inputs']['folder']], '--json', json_path, '--device', 'cuda')
    with open(json_path) as f:
        video, = json.load(f)['videos']
    for head in HEADS:
        torch.testing.assert_close(torch.tensor(video['heads'][head]['probabilities']),
                                   torch.tensor(prediction['json']['videos'][1]['heads'][head]['probabilities']),
                                   rtol=1e-3, atol=1e-4)


def test_a_release_checkpoint_file_predicts_like_this_projects_own(setup, tmp_path):
    release = str(tmp_path / 'release.pth')
    write_release_checkpoint(release, setup['model'].state_dict(), 0, setup['config'])
    paths = {}
    for name, checkpoint in (('ours', setup['checkpoint']), ('release', release)):
        paths[name] = str(tmp_path / f'{name}.json')
        status, _, _ = run_predict(dict(setup, checkpoint=checkpoint), [setup['inputs']['mp4']], '--json',
                                   paths[name])
        assert status == 0
    predictions = {name: json.load(open(path))['videos'] for name, path in paths.items()}
    assert predictions['release'] == predictions['ours']
