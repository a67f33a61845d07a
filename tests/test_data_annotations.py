"""Annotation lists: both line formats, spaces in paths, comments, DATA.ROOT, and every malformed case
with its file:line error; the fewer-than-3-frames skip."""
import logging
import os

import cv2
import numpy as np
import pytest

from datasets.annotations import AnnotationError, drop_short_videos, read_annotation_list


def write_list(tmp_path, text, name='list.txt'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def make_frame_folder(folder, num_frames, size=8):
    os.makedirs(folder, exist_ok=True)
    for index in range(num_frames):
        cv2.imwrite(os.path.join(folder, f'img_{index}.jpg'), np.full((size, size, 3), 100, np.uint8))
    return folder


def test_both_formats_spaces_comments_and_root(tmp_path):
    list_file = write_list(tmp_path, (
        '# a comment line\n'
        '\n'
        'clips/my clip 01 30 2\n'          # 3 fields, a path with spaces
        '   clips/plain 12 0   \n'         # surrounding whitespace
        'videos/some video.mp4 6\n'        # 2 fields (video file)
        '/abs/path/v.mp4\t45\t\t1\n'       # tabs, absolute path
    ))
    entries = read_annotation_list(list_file, '/data/root', num_classes=7)
    assert [(e.path, e.num_frames, e.label, e.line_number) for e in entries] == [
        ('/data/root/clips/my clip 01', 30, 2, 3),
        ('/data/root/clips/plain', 12, 0, 4),
        ('/data/root/videos/some video.mp4', None, 6, 5),
        ('/abs/path/v.mp4', 45, 1, 6),
    ]
    assert entries[0].location == f'{list_file}:3' and entries[0].list_file == list_file


def test_empty_root_keeps_relative_paths(tmp_path):
    entries = read_annotation_list(write_list(tmp_path, 'a/b 3 1\n'), '', num_classes=2)
    assert entries[0].path == 'a/b'


@pytest.mark.parametrize('line, message', [
    ('just_a_path\n', 'expected'),
    ('path 12 x\n', 'expected'),
    ('path 1.5 2\n', 'frame count must be an integer'),
    ('path -3 2\n', 'negative frame count'),
    ('path 10 7\n', 'label 7 is outside [0, 7)'),
    ('path 10 -1\n', 'label -1 is outside [0, 7)'),
    ('path 9\n', 'label 9 is outside [0, 7)'),
    ('12 3\n', None),  # a valid 2-field line: path "12", label 3
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    list_file = write_list(tmp_path, 'ok/path 20 1\n# comment\n' + line)
    if message is None:
        assert read_annotation_list(list_file, '', 7)[-1].path == '12'
        return
    with pytest.raises(AnnotationError) as error:
        read_annotation_list(list_file, '', 7)
    assert f'{list_file}:3:' in str(error.value) and message in str(error.value)


def test_missing_and_empty_lists(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere.txt'):
        read_annotation_list(str(tmp_path / 'nowhere.txt'), '', 7)
    with pytest.raises(AnnotationError, match='holds no videos'):
        read_annotation_list(write_list(tmp_path, '# only a comment\n\n'), '', 7)


def test_short_videos_are_skipped_with_one_counting_warning(tmp_path, caplog):
    root = str(tmp_path)
    make_frame_folder(os.path.join(root, 'long'), 5)
    make_frame_folder(os.path.join(root, 'two'), 2)  # the list says 40: the real count decides
    make_frame_folder(os.path.join(root, 'empty'), 0)  # bad input, not a short video: kept
    list_file = write_list(tmp_path, (
        'long 1 0\n'
        'two 40 1\n'
        'missing_short.mp4 2 2\n'   # a video with 2 frames in the list (not on disk: no count)
        'missing_long.mp4 90 2\n'
        'empty 30 3\n'
    ))
    entries = read_annotation_list(list_file, root, 7)
    with caplog.at_level(logging.WARNING, logger='datasets.annotations'):
        kept = drop_short_videos(entries)
    assert [os.path.basename(e.path) for e in kept] == ['long', 'missing_long.mp4', 'empty']
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert 'skipped 2 of 5 videos with fewer than 3 frames' in warnings[0].getMessage()
    assert list_file in warnings[0].getMessage()


def test_two_field_video_lines_use_the_decoded_length(tmp_path):
    from datasets.synthetic import write_mp4

    frames = np.zeros((2, 32, 32, 3), np.uint8)
    write_mp4(str(tmp_path / 'short.mp4'), frames)
    write_mp4(str(tmp_path / 'long.mp4'), np.zeros((6, 32, 32, 3), np.uint8))
    entries = read_annotation_list(write_list(tmp_path, 'short.mp4 0\nlong.mp4 1\n'), str(tmp_path), 7)
    assert [os.path.basename(e.path) for e in drop_short_videos(entries)] == ['long.mp4']
