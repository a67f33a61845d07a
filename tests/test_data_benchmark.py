"""The data part of scripts/benchmark.py: clips/s per worker from JPEG folders and from mp4 (a small
run; the real figures come from ``python -m scripts.benchmark loader``)."""
import re

import pytest

from scripts import benchmark

pytestmark = pytest.mark.filterwarnings('ignore:The image decoding and encoding capabilities')


def test_loader_benchmark_prints_clips_per_second_for_jpeg_and_mp4(capsys):
    status = benchmark.main(['loader', '--clips', '2', '--source-frames', '20', '--size', '64',
                             '--frames', '8', '--input-size', '32', '--iterations', '6'])
    assert status == 0
    output = capsys.readouterr().out
    assert '2 clips of 20 frames at 64 x 64' in output and '8 frames -> 32 x 32' in output
    for name in ('JPEG folders', 'mp4 \\(decord\\)'):
        per_worker = re.search(rf'{name}:\s+([\d.]+) clips/s per worker \(([\d.]+) per CPU-second\)', output)
        assert per_worker and float(per_worker.group(1)) > 0 and float(per_worker.group(2)) > 0


def test_benchmark_needs_a_section(capsys):
    with pytest.raises(SystemExit):
        benchmark.main([])
    assert 'loader' in capsys.readouterr().err
