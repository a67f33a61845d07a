"""Evaluation beyond the fold: zero-shot CLIP, cross-dataset transfer, MAFW's compound lists, and the
campaign picture.

The videos are solid-colour clips written as PNG frames: each class has two colours, alternating from
frame to frame, so a clip's mean frame feature is known without running the loader.
"""
import argparse
import csv
import json
import os

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from PIL import Image

import clip
from conftest import tiny_clip_state_dict, tiny_config
from datasets.annotations import read_annotation_list
from datasets.mafw_compound import COMPOUND_CLASSES, COMPOUND_LABELS, compound_prompts
from datasets.preparation import PROJECT_CLASSES
from models.builder import build_model
from models.zero_shot import build_zero_shot_model
from scripts import cross_dataset, prepare_mafw, summarize
from scripts import eval as eval_script
from test_results_tools import heads_with, write_run
from utils.config import add_config_arguments, load_config, validate_config
from utils.engine import Evaluation, normalize_videos
from utils.labels import REPOSITORY_ROOT, read_label_csv

NUM_FRAMES = 8  # tiny_config's T: every stored frame is sampled, 4 of each colour
CLIPS_PER_CLASS = 2
SEVEN = list(PROJECT_CLASSES[:7])
# Another dataset's classes: a different order, other spellings, and two classes the seven lack.
NINE = ['fear', 'contempt', 'happy', 'sadness', 'neutral', 'anxiety', 'angry', 'surprised', 'disgust']
# Two colours per class name (the nine's spellings map to the seven's names).
COLOURS = dict(zip(SEVEN + ['contempt', 'anxiety'],
                   torch.randint(0, 256, (9, 2, 3), generator=torch.Generator().manual_seed(0)).tolist()))
ALIASES = {'happy': 'happiness', 'angry': 'anger', 'surprised': 'surprise'}


def colour_pair(name):
    return COLOURS[ALIASES.get(name, name)]


def write_clip(folder, colours, reverse):
    """A clip of NUM_FRAMES solid 32 x 32 PNG frames alternating between two colours."""
    os.makedirs(folder, exist_ok=True)
    for frame in range(NUM_FRAMES):
        colour = colours[(frame + reverse) % 2]
        Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(os.path.join(folder, f'img_{frame}.png'))


def write_dataset(root, name, class_names):
    """Clips of every class, their test list and label CSV; returns (list, label CSV)."""
    lines = []
    for label, class_name in enumerate(class_names):
        for number in range(CLIPS_PER_CLASS):
            folder = os.path.join(root, 'frames', f'{class_name}_{number}')
            if not os.path.isdir(folder):
                write_clip(folder, colour_pair(class_name), reverse=number)
            lines.append(f'{folder} {NUM_FRAMES} {label}\n')
    list_path, labels_path = os.path.join(root, f'{name}.txt'), os.path.join(root, f'{name}_labels.csv')
    with open(list_path, 'w') as f:
        f.writelines(lines)
    write_label_csv(labels_path, class_names)
    return list_path, labels_path


def write_label_csv(path, prompts):
    with open(path, 'w', newline='') as f:
        csv.writer(f, lineterminator='\n').writerows([('id', 'name'), *enumerate(prompts)])


def dataset_config(root, list_path, labels_path, **overrides):
    """The tiny config on one of the colour datasets, written as YAML; returns (config, path)."""
    config = tiny_config(DATA__ROOT=root, DATA__TRAIN_FILE=list_path, DATA__VAL_FILE=list_path,
                         DATA__LABEL_LIST=labels_path, DATA__NUM_CLASSES=len(read_label_csv(labels_path)),
                         TEST__BATCH_SIZE=16, OUTPUT=os.path.join(root, 'out'), **overrides)
    path = os.path.splitext(list_path)[0] + '.yaml'
    with open(path, 'w') as f:
        f.write(config.dump())
    return config, path


@pytest.fixture(scope='module')
def colour_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp('colours'))


# ----------------------------------------------------------------------------------------------------
# Zero-shot
# ----------------------------------------------------------------------------------------------------
def agreeing_clip_weights(config, prompts, path):
    """Tiny CLIP weights whose text feature of prompt k is the mean image feature of class k's two
    colours: ``text_projection`` solved so that the prompts' end-of-text outputs map onto those features."""
    state = tiny_clip_state_dict()
    model = build_zero_shot_model(config, state)
    frames = torch.tensor([colour_pair(name) for name in prompts], dtype=torch.uint8)  # [K, 2, 3]
    frames = frames[:, :, :, None, None].expand(-1, -1, -1, 32, 32)  # [K, 2, 3, 32, 32]
    with torch.no_grad():
        prototypes = model.encode_video(normalize_videos(frames, config))  # [K, E]
        model.clip.text_projection.copy_(torch.eye(model.clip.text_projection.shape[0]))
        end_of_text = model.clip.encode_text(clip.tokenize(prompts))  # [K, W]
    state['text_projection'] = torch.linalg.pinv(end_of_text) @ prototypes
    torch.save(state, path)
    return path


def test_zero_shot_scores_frames_against_the_label_csvs_prompts(colour_root, tmp_path):
    list_path, labels_path = write_dataset(colour_root, 'seven', SEVEN)
    config, config_path = dataset_config(colour_root, list_path, labels_path)
    weights = agreeing_clip_weights(config, SEVEN, str(tmp_path / 'clip.pt'))
    json_path, predictions_path = str(tmp_path / 'zero.json'), str(tmp_path / 'zero.csv')
    arguments = ['--zero-shot', '--config', config_path, '--pretrained', weights, '--json', json_path]
    evaluation = eval_script.main(arguments + ['--predictions', predictions_path])
    assert set(evaluation.heads) == {'global'}  # CLIP has no snippet head
    assert evaluation.heads['global']['UAR'] == 100 and evaluation.heads['global']['WAR'] == 100
    result = json.load(open(json_path))
    assert result['zero_shot_clip'] == weights and result['num_videos'] == 7 * CLIPS_PER_CLASS
    assert os.path.isfile(str(tmp_path / 'zero.confusion_global.png'))
    assert len(list(csv.DictReader(open(predictions_path)))) == 7 * CLIPS_PER_CLASS
    # The prompts decide: the same weights with the prompts in reverse order predict class 6 - k.
    reversed_labels = str(tmp_path / 'reversed.csv')
    write_label_csv(reversed_labels, SEVEN[::-1])
    swapped = eval_script.main(arguments + ['--opts', 'DATA.LABEL_LIST', reversed_labels])
    predictions = swapped.scores['global'].argmax(dim=1)
    assert torch.equal(predictions, 6 - swapped.labels)
    assert swapped.heads['global']['UAR'] == pytest.approx(100 / 7)  # only the middle class keeps its index


def test_zero_shot_needs_a_config():
    with pytest.raises(SystemExit):
        eval_script.parse_args(['--zero-shot'])
    with pytest.raises(SystemExit):
        eval_script.parse_args(['--zero-shot', '--config', 'a.yaml', '--checkpoint', 'b.pth'])


# ----------------------------------------------------------------------------------------------------
# Cross-dataset
# ----------------------------------------------------------------------------------------------------
def test_scores_are_restricted_to_the_shared_classes():
    # model classes a, b, x, c; the test list has a, b, c (x is the model's extra class)
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.0], [0.1, 0.8, 0.05, 0.05], [0.6, 0.1, 0.2, 0.1]])
    labels = torch.tensor([0, 1, 3])  # in model classes
    evaluation = Evaluation(heads={}, scores={'global': scores}, labels=labels, indices=torch.arange(3))
    list_positions = torch.tensor([0, 2, 5])  # the third video is in the original list's second shard
    reports, extra = cross_dataset.shared_class_reports(evaluation, [0, 1, 3], list_positions, 2)
    report = reports['global']
    assert extra == 1  # the first video's best class overall is x; among the shared ones it is a
    assert report['confusion_matrix'] == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert report['UAR'] == pytest.approx(200 / 3) and report['WAR'] == pytest.approx(200 / 3)
    assert report['UAR_release'] == pytest.approx(50)  # shards {0, 2}: UAR 100, {5}: UAR 0


def write_checkpoint(path, config, seed):
    """A DK-CLIP checkpoint of a randomly initialised tiny model with ``config``."""
    model = build_model(config, tiny_clip_state_dict(seed))
    torch.save({'model': model.state_dict(), 'config': config.dump(), 'epoch': 1, 'step': 1}, path)
    return path


def expected_figures(predictions_path, model_classes):
    """UAR and WAR over the seven shared classes recomputed from a pair's per-video predictions (the
    model's probabilities restricted to its columns of the seven)."""
    spelled = [ALIASES.get(name, name) for name in model_classes]
    columns = [spelled.index(name) for name in SEVEN if name in spelled]
    rows = list(csv.DictReader(open(predictions_path)))
    probabilities = np.array([[float(row[f'prob_{name}']) for name in model_classes] for row in rows])
    truth = np.array([columns.index(int(row['label'])) for row in rows])
    predicted = probabilities[:, columns].argmax(axis=1)
    recalls = [np.mean(predicted[truth == k] == k) for k in np.unique(truth)]
    return 100 * np.mean(recalls), 100 * np.mean(predicted == truth)


def test_cross_dataset_maps_classes_by_name_and_counts_what_is_left_out(colour_root, tmp_path):
    seven_list, seven_labels = write_dataset(colour_root, 'seven', SEVEN)
    nine_list, nine_labels = write_dataset(colour_root, 'nine', NINE)
    seven_config, seven_yaml = dataset_config(colour_root, seven_list, seven_labels)
    nine_config, nine_yaml = dataset_config(colour_root, nine_list, nine_labels)
    checkpoints = [f'seven={write_checkpoint(str(tmp_path / "seven.pth"), seven_config, 1)}',
                   f'nine={write_checkpoint(str(tmp_path / "nine.pth"), nine_config, 2)}']
    out_dir = tmp_path / 'cross'
    results = cross_dataset.main(['--checkpoints', *checkpoints, '--tests', f'seven={seven_yaml}',
                                  f'nine={nine_yaml}', '--out-dir', str(out_dir)])
    by_pair = {(result['trained_on'], result['tested_on']): result for result in results}
    assert len(by_pair) == 4
    seven_on_nine, nine_on_seven = by_pair['seven', 'nine'], by_pair['nine', 'seven']
    assert seven_on_nine['class_mapping']['happy'] == 'happiness'
    assert seven_on_nine['class_mapping']['contempt'] is None
    assert seven_on_nine['left_out'] == {'contempt': CLIPS_PER_CLASS, 'anxiety': CLIPS_PER_CLASS}
    assert seven_on_nine['num_videos'] == 7 * CLIPS_PER_CLASS
    assert nine_on_seven['left_out'] == {} and nine_on_seven['class_mapping']['happiness'] == 'happy'
    # the evaluated list holds the seven's videos relabelled in the nine's classes
    translated = read_annotation_list(str(out_dir / 'pairs' / 'nine_on_seven.list.txt'), '', 9)
    assert [NINE[entry.label] for entry in translated] == [
        {'happiness': 'happy', 'anger': 'angry', 'surprise': 'surprised'}.get(name, name)
        for name in SEVEN for _ in range(CLIPS_PER_CLASS)]
    table = {(row['trained_on'], row['tested_on']): row
             for row in csv.DictReader(open(out_dir / 'cross_dataset.csv'))}
    for trained, tested, model_classes in (('seven', 'nine', SEVEN), ('nine', 'seven', NINE)):
        uar, war = expected_figures(out_dir / 'pairs' / f'{trained}_on_{tested}.predictions.csv', model_classes)
        assert (float(table[trained, tested]['UAR']), float(table[trained, tested]['WAR'])) == \
            (pytest.approx(uar, abs=0.006), pytest.approx(war, abs=0.006))
    rows = list(csv.DictReader(open(out_dir / 'pairs' / 'nine_on_seven.predictions.csv')))
    extra = sum(NINE[int(row['pred_global'])] in ('contempt', 'anxiety') for row in rows)
    assert nine_on_seven['extra_class_predictions'] == extra
    assert table['seven', 'nine']['left_out'] == str(2 * CLIPS_PER_CLASS)
    assert table['seven', 'nine']['shared_classes'] == '7/9'
    assert imread(str(out_dir / 'cross_dataset.png')).shape[0] > 0
    table_rows = [line for line in open(out_dir / 'cross_dataset.md') if line.startswith('| ')]
    assert len(table_rows) == 1 + 4  # the header and one row per pair


# ----------------------------------------------------------------------------------------------------
# MAFW's compound lists
# ----------------------------------------------------------------------------------------------------
# clip id -> MAFW's compound label, and the index it must get in the documented order
COMPOUND_CLIPS = {'00021': ('anger_disgust', 21), '00022': ('Disgust_Anger', 21), '00023': ('neutral', 2),
                  '00024': ('sadness_helplessness', 18), '00025': ('fear_surprise_anxiety', 39)}


def make_mafw_compound(root, compound_labels=None):
    """Frame folders and the single and compound splits (the compound labels from ``compound_labels``,
    default COMPOUND_CLIPS'); fold k tests the k-th clip."""
    ids = sorted(COMPOUND_CLIPS)
    for number, clip_id in enumerate(ids):
        write_clip(str(root / 'data' / 'frames' / clip_id), [[20 * number] * 3, [200] * 3], reverse=0)
    for split_set in ('single', 'compound'):
        for fold in range(1, 6):
            folder = root / 'Train & Test Set' / split_set / 'no_caption' / f'set_{fold}'
            os.makedirs(folder)
            compound = compound_labels or {i: COMPOUND_CLIPS[i][0] for i in ids}
            names = compound if split_set == 'compound' else dict.fromkeys(ids, 'anger')
            for split, chosen in (('test', [ids[fold - 1]]), ('train', [i for i in ids if i != ids[fold - 1]])):
                (folder / f'{split}.txt').write_text(''.join(f'{i}.mp4 {names[i]}\n' for i in chosen))


def test_prepare_mafw_writes_the_43_class_compound_lists(tmp_path, capsys):
    make_mafw_compound(tmp_path)
    output = tmp_path / 'lists'
    assert prepare_mafw.main(['--root', str(tmp_path), '--output', str(output)]) == 0
    ids = sorted(COMPOUND_CLIPS)
    for fold in range(1, 6):
        test, train = (read_annotation_list(str(output / 'compound' / f'set_{fold}_{split}.txt'), str(tmp_path),
                                            43) for split in ('test', 'train'))
        assert [entry.label for entry in test] == [COMPOUND_CLIPS[ids[fold - 1]][1]] and len(train) == 4
        assert os.path.isfile(output / f'set_{fold}_test.txt')  # the single set as before
    assert '39 fear_surprise_anxiety' in capsys.readouterr().out
    # the shipped config trains on these lists with the 43 classes
    parser = add_config_arguments(argparse.ArgumentParser())
    config = load_config(parser.parse_args([
        '--config', os.path.join(REPOSITORY_ROOT, 'configs', 'mafw_compound', 'fold1.yaml'),
        '--opts', 'DATA.ROOT', str(tmp_path), 'DATA.TRAIN_FILE', str(output / 'compound' / 'set_1_train.txt'),
        'DATA.VAL_FILE', str(output / 'compound' / 'set_1_test.txt')]))
    validate_config(config)  # the label CSV has 43 rows, the lists exist
    assert (config.DATA.DATASET, config.DATA.NUM_CLASSES) == ('mafw_compound', 43)
    assert len(read_annotation_list(config.DATA.VAL_FILE, config.DATA.ROOT, config.DATA.NUM_CLASSES)) == 1


def test_an_unknown_compound_label_names_its_line(tmp_path, capsys):
    make_mafw_compound(tmp_path, dict.fromkeys(COMPOUND_CLIPS, 'happiness_fear'))
    assert prepare_mafw.main(['--root', str(tmp_path), '--output', str(tmp_path / 'lists')]) == 2
    error = capsys.readouterr().err
    assert "compound/no_caption/set_1/train.txt:1: 'happiness_fear' is not one of MAFW's 43" in error


def test_compound_classes_and_their_shipped_prompts():
    assert len(COMPOUND_CLASSES) == len(set(COMPOUND_CLASSES)) == 43
    assert COMPOUND_CLASSES[:11] == PROJECT_CLASSES  # the single classes first, in the project's order
    single_enhanced = read_label_csv('labels/mafw_11_AUE_labels.csv')  # found from any working folder
    single_prompts = dict(zip(PROJECT_CLASSES, single_enhanced))
    names, enhanced = (read_label_csv(COMPOUND_LABELS[kind]) for kind in ('names', 'AUE'))
    assert names == compound_prompts() and enhanced == compound_prompts(single_prompts)
    assert enhanced[:11] == single_enhanced
    assert names[21] == 'anger and disgust' and names[39] == 'fear, surprise and anxiety'
    assert enhanced[21] == ('anger and disgust with brow lowerer and lid tightener and chin raiser and '
                            'lip pressor and nose wrinkler and upper lip raiser')  # chin raiser named once
    assert clip.tokenize(enhanced).shape == (43, 77)  # every prompt fits CLIP's context


# ----------------------------------------------------------------------------------------------------
# The campaign picture
# ----------------------------------------------------------------------------------------------------
def test_summarize_draws_the_results_picture(tmp_path):
    for fold, uar in ((1, 60.0), (2, 50.0)):
        for seed, shift in ((1, 0.0), (2, 2.0)):
            write_run(tmp_path / f'fold{fold}' / f'seed{seed}',
                      heads_with([50.0] * 7, uar + shift, 70.0 + shift, release=([50.0] * 7, uar + shift + 1)))
    markdown_path, _ = summarize.main([str(tmp_path), '--out-dir', str(tmp_path / 'log')])
    picture = imread(os.path.join(os.path.dirname(markdown_path), 'results.png'))
    assert picture.shape[0] > 100 and picture.shape[1] > 100
    runs = summarize.runs_from_paths([str(tmp_path)])
    reports = {run: summarize.read_run_report(run, 'best', 'global')[1] for run in runs}
    rows = summarize.summary_rows(runs, reports, 'dfew', 7)
    values, published = summarize.picture_values(runs, reports, rows)
    assert values['UAR']['1'] == [60.0, 62.0] and values['WAR']['2'] == [70.0, 72.0]
    assert values['UAR_release']['Avg'] == [56.0, 58.0]  # each seed's mean over the folds
    assert published['UAR_release']['1'] == 63.29 and published['WAR']['2'] == 73.22  # the published UAR, WAR


def test_a_43_class_campaign_is_summarised_without_published_figures(tmp_path):
    os.makedirs(tmp_path / 'fold1')
    report = {'UAR': 30.0, 'WAR': 40.0, 'UAR_release': 31.0, 'per_class_recall': [30.0] * 43,
              'per_class_recall_release': [31.0] * 43, 'confusion_matrix': []}
    record = {'type': 'final', 'dataset': 'mafw_compound', 'class_names': list(COMPOUND_CLASSES),
              'best': {'epoch': 1, 'heads': {'global': report}},
              'last': {'epoch': 1, 'heads': {'global': report}}}
    (tmp_path / 'fold1' / 'metrics.jsonl').write_text(json.dumps(record) + '\n')
    markdown_path, csv_path = summarize.main([str(tmp_path / 'fold1'), '--out-dir', str(tmp_path / 'log')])
    markdown = open(markdown_path).read()
    assert markdown.startswith('### MAFW_COMPOUND') and 'No published figures' in markdown
    fold, average = csv.DictReader(open(csv_path))
    assert (fold['UAR_release_mean'], fold['published_UAR'], fold['delta_UAR_release']) == ('31.00', '', '')
    assert fold['fear_surprise_anxiety'] == '30.00' and fold['fear_surprise_anxiety_release'] == '31.00'
    assert imread(str(tmp_path / 'log' / 'results.png')).shape[0] > 0
