"""Frame sampling against the rules of docs/data.md (section 6), written out independently in the tests."""
import pytest
import torch

from datasets import sampling  # module access: pytest would collect a bare test_frame_indices

T = 16


def reference_test_indices(n, t, views):
    """docs/data.md, section 6, literally: avg = n / T; view v at int(i * avg + avg * (v + 0.5) / V), modulo n."""
    average = n / t
    return [[int(i * average + average * (v + 0.5) / views) % n for i in range(t)] for v in range(views)]


@pytest.mark.parametrize('n', [5, 16, 17, 24, 31, 32, 100, 1000])
def test_single_view_test_indices_are_int_of_segment_middles(n):
    expected = [int(i * (n / T) + (n / T) / 2) for i in range(T)]  # the one-view formula of docs/data.md
    assert sampling.test_frame_indices(n, T, 1).tolist() == [expected]


@pytest.mark.parametrize('n', [5, 16, 24, 100, 1000])
@pytest.mark.parametrize('views', [2, 3, 4])
def test_multi_view_test_indices(n, views):
    indices = sampling.test_frame_indices(n, T, views)
    assert indices.shape == (views, T)
    assert indices.tolist() == reference_test_indices(n, T, views)
    assert torch.equal(indices, sampling.test_frame_indices(n, T, views))  # deterministic


@pytest.mark.parametrize('views', [2, 3])
def test_test_views_differ_and_stay_in_their_segments_when_frames_allow(views):
    n = 200
    indices = sampling.test_frame_indices(n, T, views)
    assert len({tuple(view) for view in indices.tolist()}) == views
    segment_length = n / T
    segments = torch.div(indices.double(), segment_length, rounding_mode='floor')
    assert torch.equal(segments, torch.arange(T, dtype=torch.float64).expand(views, T))
    assert (indices[1:] > indices[:-1]).all()  # later views sit later in every segment


@pytest.mark.parametrize('n', [1, 3, 5, 10, 15])
def test_train_indices_for_short_videos_are_rounded_uniform_positions(n):
    # n < T: avg == 0, index_i = round(i * n / T) (half to even, as np.around), modulo n
    expected = [round(i * n / T) % n for i in range(T)]
    for _ in range(3):
        assert sampling.train_frame_indices(n, T).tolist() == expected


def test_train_indices_for_n_equal_t_take_every_frame():
    assert sampling.train_frame_indices(T, T).tolist() == list(range(T))


@pytest.mark.parametrize('n', [17, 24, 31])
def test_train_indices_between_t_and_2t_take_the_first_t_frames(n):
    # avg = n // T = 1: index_i = i + randint(1) = i (the release's behaviour)
    for _ in range(5):
        assert sampling.train_frame_indices(n, T).tolist() == list(range(T))


@pytest.mark.parametrize('n', [32, 100, 1000])
def test_train_indices_draw_one_frame_per_segment(n):
    average = n // T
    draws = torch.stack([sampling.train_frame_indices(n, T) for _ in range(400)])  # [400, T]
    offsets = draws - torch.arange(T) * average
    assert offsets.min() >= 0 and offsets.max() < average  # inside segment i = [i*avg, (i+1)*avg)
    assert (draws[:, 1:] > draws[:, :-1]).all()  # sorted, no repeats
    # every offset of the segment is drawn, roughly uniformly
    counts = torch.bincount(offsets.flatten(), minlength=average).double()
    if average <= 8:
        assert (counts > 0).all()
        assert counts.max() / counts.min() < 2.0
    assert abs(offsets.double().mean().item() - (average - 1) / 2) < 0.1 * average
