"""utils.files: a failed write leaves the previous file whole and no temporary behind."""
import json
import os

import pytest

from utils.files import atomic_write, write_json


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / 'results.json'
    write_json(str(path), {'UAR': 64.95})
    with pytest.raises(RuntimeError, match='disk full'):
        with atomic_write(str(path)) as f:
            f.write('{"UAR": 1')  # half of a new file, then the write fails
            raise RuntimeError('disk full')
    assert json.loads(path.read_text()) == {'UAR': 64.95}
    assert os.listdir(tmp_path) == ['results.json']


def test_binary_write_creates_the_folder(tmp_path):
    path = tmp_path / 'new' / 'folder' / 'weights.bin'
    with atomic_write(str(path), 'wb') as f:
        f.write(b'\x00\x01')
    assert path.read_bytes() == b'\x00\x01'
    assert os.listdir(path.parent) == ['weights.bin']
