"""Following one face through a video (docs/data.md, section 18): link, choose, fill, smooth.

Input: the detections of the frames that were examined, ``{frame index: boxes [M, 4]}`` with rows
``(centre x, centre y, side, score)``. Output: one box ``(centre x, centre y, side)`` per frame, NaN
where the followed face is absent.

1. Link: the detections of each examined frame join the track whose last box is nearest (centre
   within ``LINK_DISTANCE`` of its side, side within a factor ``LINK_SIZE_RATIO``), largest faces
   first; a detection near no track starts a new one. A track stays open however long its face is
   missing, so a face that comes back where it left continues its track.
2. Choose: the track with the largest sum of face sides over its detections, i.e. the largest and
   most persistent face.
3. Fill: across a run of at most ``max_gap`` frames without a detection between two detections of
   that track (a blink of the detector, a hand over the face), the box is interpolated linearly.
   Longer runs, and the frames before the first and after the last detection, have no box: the face
   is absent there (a face entering or leaving the picture starts and ends with its detections).
4. Smooth: centre and side are smoothed over time with a Gaussian of ``smooth_sigma`` frames within
   each run of frames that have a box, so the crops do not jitter with the detector. The runs are
   extended past their ends by point reflection, which keeps a moving face's box on it at the ends.
"""
import numpy as np

# A detection continues a track when its centre is within this fraction of the track's last side...
LINK_DISTANCE = 0.6
# ... and its side is within this factor of that side.
LINK_SIZE_RATIO = 1.5


def link_tracks(detections):
    """Group detections into tracks (step 1 of the module docstring).

    Args:
        detections: ``{frame index: float boxes [M, 4]}`` of the examined frames.

    Returns:
        list of tracks, each a list of ``(frame index, box [4])`` in frame order.
    """
    tracks = []
    for frame in sorted(detections):
        extended = set()
        for box in sorted(detections[frame], key=lambda row: -row[2]):  # largest first
            match = nearest_track(tracks, box, extended)
            if match is None:
                tracks.append([(frame, box)])
                match = len(tracks) - 1
            else:
                tracks[match].append((frame, box))
            extended.add(match)
    return tracks


def nearest_track(tracks, box, excluded):
    """Index of the track whose last box ``box`` continues (nearest centre), or None."""
    best, best_distance = None, np.inf
    for index, track in enumerate(tracks):
        last = track[-1][1]
        distance = np.hypot(box[0] - last[0], box[1] - last[1])
        size_ratio = max(box[2], last[2]) / min(box[2], last[2])
        close = distance <= LINK_DISTANCE * last[2] and size_ratio <= LINK_SIZE_RATIO
        if close and index not in excluded and distance < best_distance:
            best, best_distance = index, distance
    return best


def main_track(tracks):
    """The track with the largest sum of face sides (step 2), or None when there are no tracks."""
    if not tracks:
        return None
    return max(tracks, key=lambda track: sum(box[2] for _, box in track))


def covered_frames(detected_frames, num_frames, max_gap):
    """Which frames get a box (step 3): bool ``[num_frames]``.

    Args:
        detected_frames: sorted frame indices where the followed face was detected.
        num_frames: frames in the video.
        max_gap: the longest run of frames without a detection that is filled.
    """
    covered = np.zeros(num_frames, dtype=bool)
    covered[detected_frames[0]:detected_frames[-1] + 1] = True
    for previous, following in zip(detected_frames[:-1], detected_frames[1:]):
        if following - previous - 1 > max_gap:  # a long absence: no box in between
            covered[previous + 1:following] = False
    return covered


def fill_boxes(track, num_frames, max_gap):
    """Per-frame boxes ``[num_frames, 3]`` of a track, interpolated across short misses (step 3); NaN
    elsewhere."""
    frames = np.array([frame for frame, _ in track])
    boxes = np.array([box[:3] for _, box in track])  # [D, 3]
    every_frame = np.arange(num_frames)
    filled = np.stack([np.interp(every_frame, frames, boxes[:, column]) for column in range(3)], axis=1)
    filled[~covered_frames(frames, num_frames, max_gap)] = np.nan
    return filled


def gaussian_kernel(sigma):
    """Normalised 1-D Gaussian weights over +-3 sigma (a single 1 for ``sigma`` 0)."""
    radius = int(np.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2) if sigma > 0 else (offsets == 0).astype(float)
    return weights / weights.sum()


def smooth_boxes(boxes, sigma):
    """Gaussian smoothing over time (step 4) of each run of frames with a box; NaN rows stay NaN."""
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    smoothed = boxes.copy()
    for start, stop in runs(~np.isnan(boxes[:, 0])):
        # point reflection continues a steady motion past the run's ends; holding the edge value
        # instead would pull the boxes of a moving face back towards where it was
        padded = np.pad(boxes[start:stop], ((radius, radius), (0, 0)), mode='reflect', reflect_type='odd')
        for column in range(boxes.shape[1]):
            smoothed[start:stop, column] = np.convolve(padded[:, column], kernel, mode='valid')
    return smoothed


def runs(mask):
    """``[(start, stop), ...]`` of the runs of True in a bool array (stop exclusive)."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def follow_face(detections, num_frames, max_gap, smooth_sigma):
    """One smoothed box per frame for the video's main face (steps 1-4 of the module docstring).

    Args:
        detections: ``{frame index: boxes [M, 4]}`` of the examined frames.
        num_frames: frames in the video.
        max_gap: longest run of frames without a detection that is filled.
        smooth_sigma: Gaussian sigma in frames (0: no smoothing).

    Returns:
        float ``[num_frames, 3]`` ``(centre x, centre y, side)``, NaN where the face is absent; all NaN
        when nothing was detected.
    """
    track = main_track(link_tracks(detections))
    if track is None:
        return np.full((num_frames, 3), np.nan)
    return smooth_boxes(fill_boxes(track, num_frames, max_gap), smooth_sigma)
