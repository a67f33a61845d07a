"""Segment-based frame sampling (docs/data.md, section 6): T segments, one frame from each.

Random draws use torch's generator, which the data-loader workers seed (see ``build.seed_worker``).
"""
import torch


def train_frame_indices(num_video_frames, num_segments):
    """Frame indices for a training clip: one random frame in each of ``num_segments`` segments.

    With ``avg = n // T``: ``i * avg + randint(avg)`` when avg > 0; T sorted uniform draws in
    ``[0, n)`` when n > T (the release's branch, unreachable for one frame per segment); else
    ``round(i * n / T)``. Indices wrap modulo n.

    Args:
        num_video_frames: frames in the video (n >= 1).
        num_segments: frames to sample (T).

    Returns:
        torch.LongTensor ``[T]``.
    """
    n, t = num_video_frames, num_segments
    average = n // t
    if average > 0:
        indices = torch.arange(t) * average + torch.randint(average, (t,))
    elif n > t:
        indices = torch.randint(n, (t,)).sort().values
    else:
        # round half to even, like the release's np.around
        indices = torch.round(torch.arange(t, dtype=torch.float64) * n / t).long()
    return indices % n


def test_frame_indices(num_video_frames, num_segments, num_views):
    """Deterministic frame indices for ``num_views`` temporal views of a test clip.

    Segment length ``avg = n / T``; view v of V takes the frame at offset ``(v + 0.5) / V`` of each
    segment: ``int(i * avg + avg * (v + 0.5) / V)`` (for one view: ``int(i * avg + avg / 2)``).

    Args:
        num_video_frames: frames in the video (n >= 1).
        num_segments: frames per view (T).
        num_views: temporal views (``TEST.NUM_CLIP``).

    Returns:
        torch.LongTensor ``[V, T]``.
    """
    n, t = num_video_frames, num_segments
    average = n / t
    segment_starts = torch.arange(t, dtype=torch.float64) * average  # [T]
    offsets = (torch.arange(num_views, dtype=torch.float64) + 0.5) / num_views * average  # [V]
    positions = segment_starts[None, :] + offsets[:, None]  # [V, T]
    return positions.long() % n  # .long() truncates toward zero, like int()
