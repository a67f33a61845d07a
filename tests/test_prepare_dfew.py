"""scripts/prepare_dfew.py on a small fake copy of the official DFEW layout."""
import os

import numpy as np
import pytest

from datasets.annotations import read_annotation_list
from datasets.synthetic import write_frame_folder, write_mp4
from scripts import prepare_dfew

# clip id -> official DFEW label (1 happy, 2 sad, 3 neutral, 4 angry, 5 surprise, 6 disgust, 7 fear)
CLIPS = {1: 1, 2: 4, 3: 7, 4: 2, 5: 5, 6: 6, 7: 3, 8: 4}
PROJECT = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6}  # happy->happiness 0, angry->anger 3, ...


def make_dfew(root, as_videos=False):
    """Clips 00001..00008 (frame folders or mp4) and the 5 folds' split CSVs; fold k tests clip k."""
    for clip_id in CLIPS:
        frames = np.full((4 + clip_id, 32, 32, 3), 10 * clip_id, np.uint8)
        if as_videos:
            os.makedirs(root / 'Clip' / 'original', exist_ok=True)
            write_mp4(str(root / 'Clip' / 'original' / f'{clip_id:05d}.mp4'), frames)
        else:
            write_frame_folder(str(root / 'Clip' / 'clip_224x224' / f'{clip_id:05d}'), frames)
    for fold in range(1, 6):
        for split in ('train', 'test'):
            ids = [fold] if split == 'test' else [i for i in CLIPS if i != fold]
            folder = root / 'EmoLabel_DataSplit' / f'{split}(single-labeled)'
            os.makedirs(folder, exist_ok=True)
            rows = ''.join(f'{clip_id},{CLIPS[clip_id]}\n' for clip_id in ids)
            (folder / f'set_{fold}.csv').write_text('video_name,label\n' + rows)


@pytest.mark.parametrize('as_videos', [False, True])
def test_lists_for_every_fold_with_labels_mapped_into_the_project_order(tmp_path, capsys, as_videos):
    make_dfew(tmp_path, as_videos)
    output = tmp_path / 'lists'
    argv = ['--root', str(tmp_path), '--output', str(output)]
    assert prepare_dfew.main(argv + (['--clips-dir', 'Clip/original'] if as_videos else [])) == 0
    assert sorted(os.listdir(output)) == sorted(f'set_{k}_{s}.txt' for k in range(1, 6)
                                                for s in ('train', 'test'))
    for fold in range(1, 6):
        test = read_annotation_list(str(output / f'set_{fold}_test.txt'), str(tmp_path), 7)
        expected_path = (f'Clip/original/{fold:05d}.mp4' if as_videos else f'Clip/clip_224x224/{fold:05d}')
        assert [(e.path, e.num_frames, e.label) for e in test] == [
            (str(tmp_path / expected_path), 4 + fold, PROJECT[CLIPS[fold]])]
        train = read_annotation_list(str(output / f'set_{fold}_train.txt'), str(tmp_path), 7)
        assert len(train) == 7 and all(os.path.exists(e.path) for e in train)
    summary = capsys.readouterr().out
    assert '3 anger' in summary and 'set_5_test' in summary and 'total' in summary
    anger_row = next(line for line in summary.splitlines() if line.startswith('3 anger'))
    assert anger_row.split()[2:] == ['2', '0', '1', '1', '2', '0', '2', '0', '2', '0']  # clips 2 and 8


def test_class_name_labels_and_missing_clips(tmp_path, capsys):
    make_dfew(tmp_path)
    split = tmp_path / 'EmoLabel_DataSplit' / 'test(single-labeled)' / 'set_1.csv'
    split.write_text('video_name,label\n1,Angry\n2,surprised\n99,1\n')
    output = tmp_path / 'lists'
    assert prepare_dfew.main(['--root', str(tmp_path), '--output', str(output)]) == 2
    error = capsys.readouterr().err
    assert f'{split}:4: 00099' in error and '1 clips named in the split files are not under' in error
    assert not output.exists()  # nothing half-written
    assert prepare_dfew.main(['--root', str(tmp_path), '--output', str(output), '--skip-missing']) == 0
    test = read_annotation_list(str(output / 'set_1_test.txt'), str(tmp_path), 7)
    assert [e.label for e in test] == [3, 4]  # angry -> anger 3, surprised -> surprise 4
    split.write_text('video_name,label\n1,grumpy\n')
    assert prepare_dfew.main(['--root', str(tmp_path), '--output', str(output)]) == 2
    assert f"{split}:2: unknown class name 'grumpy'" in capsys.readouterr().err


def test_frame_names_that_sort_differently_as_strings_are_reported(tmp_path, capsys):
    make_dfew(tmp_path)
    argv = ['--root', str(tmp_path), '--output', str(tmp_path / 'lists')]
    assert prepare_dfew.main(argv) == 0
    assert 'sort the same as strings and as numbers' in capsys.readouterr().out  # 000.jpg, 001.jpg, ...
    folder = tmp_path / 'Clip' / 'clip_224x224' / '00007'
    for name in os.listdir(folder):
        os.rename(folder / name, folder / f'{int(name[:3])}.jpg')  # 0.jpg .. 10.jpg: 10 before 2 as strings
    assert prepare_dfew.main(argv) == 0
    printed = capsys.readouterr().out
    assert 'warning: in 1 of 8 clips' in printed and 'Clip/clip_224x224/00007' in printed
    assert 'DATA.FRAME_ORDER' in printed
