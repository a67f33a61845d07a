"""scripts/prepare_mafw.py on a small fake copy of the official MAFW layout (11 classes)."""
import os

import numpy as np
import pytest

from datasets.annotations import read_annotation_list
from datasets.synthetic import write_frame_folder, write_mp4
from scripts import prepare_mafw

# clip id -> class name as in MAFW's lists, and the project index it must map to
CLIPS = {'00011': ('anger', 3), '00012': ('contempt', 7), '00013': ('happiness', 0),
         '00014': ('disappointment', 10), '00015': ('anxiety', 8), '00016': ('helplessness', 9)}
SPLIT_DIR = os.path.join('Train & Test Set', 'single', 'no_caption')


def make_mafw(root, as_videos=False, numeric=None):
    """Frames (or clips) of CLIPS and 5 folds; fold k tests the k-th clip."""
    ids = sorted(CLIPS)
    for number, clip_id in enumerate(ids):
        frames = np.full((6, 32, 32, 3), 30 * number, np.uint8)
        if as_videos:
            os.makedirs(root / 'data' / 'clips', exist_ok=True)
            write_mp4(str(root / 'data' / 'clips' / f'{clip_id}.mp4'), frames)
        else:
            write_frame_folder(str(root / 'data' / 'frames' / clip_id), frames)
    for fold in range(1, 6):
        folder = root / SPLIT_DIR / f'set_{fold}'
        os.makedirs(folder)
        for split, chosen in (('test', [ids[fold - 1]]), ('train', [i for i in ids if i != ids[fold - 1]])):
            labels = [numeric[CLIPS[i][0]] if numeric else CLIPS[i][0] for i in chosen]
            (folder / f'{split}.txt').write_text(''.join(f'{i}.mp4 {label}\n' for i, label in
                                                         zip(chosen, labels)))


@pytest.mark.parametrize('as_videos', [False, True])
def test_lists_for_every_fold_with_names_mapped_to_the_11_class_order(tmp_path, capsys, as_videos):
    make_mafw(tmp_path, as_videos)
    output = tmp_path / 'lists'
    arguments = ['--root', str(tmp_path), '--output', str(output)]
    assert prepare_mafw.main(arguments + (['--clips-dir', 'data/clips'] if as_videos else [])) == 0
    ids = sorted(CLIPS)
    for fold in range(1, 6):
        test = read_annotation_list(str(output / f'set_{fold}_test.txt'), str(tmp_path), 11)
        expected = (f'data/clips/{ids[fold - 1]}.mp4' if as_videos else f'data/frames/{ids[fold - 1]}')
        assert [(os.path.relpath(e.path, tmp_path), e.num_frames, e.label) for e in test] == [
            (expected, 6, CLIPS[ids[fold - 1]][1])]
        assert len(read_annotation_list(str(output / f'set_{fold}_train.txt'), str(tmp_path), 11)) == 5
    summary = capsys.readouterr().out
    assert '10 disappointment' in summary and '7 contempt' in summary


def test_numeric_labels_need_an_explicit_numbering(tmp_path, capsys):
    official = ('anger', 'disgust', 'fear', 'happiness', 'neutral', 'sadness', 'surprise', 'contempt',
                'anxiety', 'helplessness', 'disappointment')
    make_mafw(tmp_path, numeric={name: official.index(name) + 1 for name in official})
    arguments = ['--root', str(tmp_path), '--output', str(tmp_path / 'lists')]
    assert prepare_mafw.main(arguments) == 2
    assert 'set_1/train.txt:1: numeric label' in capsys.readouterr().err
    assert prepare_mafw.main(arguments + ['--numeric-labels', ','.join(official), '--first-label', '1']) == 0
    test = read_annotation_list(str(tmp_path / 'lists' / 'set_2_test.txt'), str(tmp_path), 11)
    assert [e.label for e in test] == [7]  # number 8 = contempt -> project 7
    with pytest.raises(SystemExit):
        prepare_mafw.main(arguments + ['--numeric-labels', 'anger,grumpy'])
    assert "unknown class name 'grumpy'" in capsys.readouterr().err
