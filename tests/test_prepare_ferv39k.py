"""scripts/prepare_ferv39k.py on a small fake copy of the official FERV39K layout."""
import os

import numpy as np
import pytest

from datasets.annotations import read_annotation_list
from datasets.synthetic import write_frame_folder, write_mp4
from scripts import prepare_ferv39k

# A public numbering orders the classes alphabetically: Angry 0 ... Surprise 6. The script must
# not trust it: the project order is happiness 0, sadness 1, neutral 2, anger 3, surprise 4, ...
ALPHABETICAL = ('Angry', 'Disgust', 'Fear', 'Happy', 'Neutral', 'Sad', 'Surprise')
PROJECT_INDEX = {'Angry': 3, 'Disgust': 5, 'Fear': 6, 'Happy': 0, 'Neutral': 2, 'Sad': 1, 'Surprise': 4}
TRAIN = [('Action', 'Angry', '0001'), ('Action', 'Happy', '0002'), ('Daily Life', 'Sad', '0003'),
         ('Daily Life', 'Surprise', '0004'), ('Crime', 'Fear', '0005')]
TEST = [('Action', 'Disgust', '0006'), ('Crime', 'Neutral', '0007'), ('Crime', 'Happy', '0008')]


def make_ferv39k(root, as_videos=False):
    for number, (scene, class_name, clip_id) in enumerate(TRAIN + TEST):
        frames = np.full((5 + number, 32, 32, 3), 20 * number, np.uint8)
        folder = root / '2_ClipsforFaceCrop' / scene / class_name
        if as_videos:
            os.makedirs(folder, exist_ok=True)
            write_mp4(str(folder / f'{clip_id}.mp4'), frames)
        else:
            write_frame_folder(str(folder / clip_id), frames)
    split_dir = root / '4_setups' / 'All_scenes'
    os.makedirs(split_dir)
    for name, clips in (('train_All.csv', TRAIN), ('test_All.csv', TEST)):
        lines = [f'{scene}/{class_name}/{clip_id},{ALPHABETICAL.index(class_name)}\n'
                 for scene, class_name, clip_id in clips]
        (split_dir / name).write_text(''.join(lines))
    return split_dir


@pytest.mark.parametrize('as_videos', [False, True])
def test_classes_come_from_the_class_folders_not_the_numbers(tmp_path, capsys, as_videos):
    make_ferv39k(tmp_path, as_videos)
    output = tmp_path / 'lists'
    assert prepare_ferv39k.main(['--root', str(tmp_path), '--output', str(output)]) == 0
    for name, clips in (('train', TRAIN), ('test', TEST)):
        entries = read_annotation_list(str(output / f'{name}.txt'), str(tmp_path), 7)
        assert [e.label for e in entries] == [PROJECT_INDEX[class_name] for _, class_name, _ in clips]
        suffix = '.mp4' if as_videos else ''
        assert [os.path.relpath(e.path, tmp_path) for e in entries] == [
            f'2_ClipsforFaceCrop/{scene}/{class_name}/{clip_id}{suffix}' for scene, class_name, clip_id in clips]
        assert all(e.num_frames >= 5 for e in entries)
    summary = capsys.readouterr().out
    happiness = next(line for line in summary.splitlines() if line.startswith('0 happiness'))
    assert happiness.split()[2:] == ['1', '1']


def test_inconsistent_numbers_and_disagreeing_names_are_errors(tmp_path, capsys):
    split_dir = make_ferv39k(tmp_path)
    arguments = ['--root', str(tmp_path), '--output', str(tmp_path / 'lists')]
    train = split_dir / 'train_All.csv'
    train.write_text('Action/Angry/0001 0\nAction/Happy/0002 0\n')
    assert prepare_ferv39k.main(arguments) == 2
    assert f'{train}:2: label 0 stands for anger on an earlier line' in capsys.readouterr().err
    train.write_text('Action/Angry/0001 Happy\n')
    assert prepare_ferv39k.main(arguments) == 2
    assert "disagrees with the class folder" in capsys.readouterr().err
    train.write_text('Action/Angry/0001 angry\nAction/Happy/0002 happy\n')  # names agreeing: fine
    assert prepare_ferv39k.main(arguments) == 0
    entries = read_annotation_list(str(tmp_path / 'lists' / 'train.txt'), str(tmp_path), 7)
    assert [e.label for e in entries] == [3, 0]


def test_paths_without_class_folders_need_names_or_an_explicit_numbering(tmp_path, capsys):
    make_ferv39k(tmp_path)
    flat = tmp_path / 'flat'
    write_frame_folder(str(flat / 'clip_a'), np.zeros((4, 32, 32, 3), np.uint8))
    split_dir = tmp_path / 'splits'
    os.makedirs(split_dir)
    (split_dir / 'train_All.csv').write_text('clip_a 3\n')
    (split_dir / 'test_All.csv').write_text('clip_a 3\n')
    arguments = ['--root', str(tmp_path), '--output', str(tmp_path / 'lists'), '--clips-dir', 'flat',
                 '--split-dir', 'splits']
    assert prepare_ferv39k.main(arguments) == 2
    assert '--numeric-labels' in capsys.readouterr().err
    numbering = ['--numeric-labels', ','.join(ALPHABETICAL)]
    assert prepare_ferv39k.main(arguments + numbering) == 0
    entries = read_annotation_list(str(tmp_path / 'lists' / 'test.txt'), str(tmp_path), 7)
    assert [e.label for e in entries] == [0]  # alphabetical 3 = Happy -> happiness 0
