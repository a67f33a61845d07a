"""The video dataset: sampled, decoded and transformed clips of an annotation list's videos."""
import logging

import torch
from torch.utils.data import Dataset

from datasets.decoding import VideoReadError, open_video
from datasets.sampling import test_frame_indices, train_frame_indices

logger = logging.getLogger(__name__)

# With DATA.SKIP_BAD: consecutive unreadable replacements tolerated before giving up.
MAX_REPLACEMENTS = 20


class VideoDataset(Dataset):
    """Clips of the videos of an annotation list.

    A training item is one randomly sampled, augmented clip, uint8 ``[T, 3, S, S]``; a test item holds
    ``TEST.NUM_CLIP x TEST.NUM_CROP`` deterministic views, uint8 ``[V, T, 3, S, S]`` (view
    ``clip * num_crops + crop``).

    Args:
        entries: the list's ``AnnotationEntry`` objects (``dataset.entries[i]`` is item i's entry).
        num_frames: frames per clip (T, ``DATA.NUM_FRAMES``).
        transform: a ``TrainTransform`` (train) or ``TestTransform``.
        train: random training sampling, else deterministic test views.
        num_clips: temporal views per test item (``TEST.NUM_CLIP``); unused for training.
        skip_bad: replace an unreadable video by another one (``DATA.SKIP_BAD``) instead of raising.
        frame_order: how the images of a frame folder are sorted (``DATA.FRAME_ORDER``).
    """

    def __init__(self, entries, num_frames, transform, train, num_clips, skip_bad, frame_order='natural'):
        self.entries = list(entries)
        self.num_frames = num_frames
        self.transform = transform
        self.train = train
        self.num_clips = num_clips
        self.skip_bad = skip_bad
        self.frame_order = frame_order
        self.bad_messages = {}  # index -> error message, per process (each worker has its own)

    def __len__(self):
        return len(self.entries)

    @property
    def labels(self):
        """The class index of every entry, in list order."""
        return [entry.label for entry in self.entries]

    def load(self, index):
        """Decode and transform item ``index`` (no replacement).

        Raises:
            VideoReadError: the video cannot be read; the message names the file and list line.
        """
        video = open_video(self.entries[index], self.frame_order)
        if self.train:
            return self.transform(video.read(train_frame_indices(len(video), self.num_frames)))
        return test_views(video, self.num_frames, self.num_clips, self.transform)[0]

    def _replacement(self, index):
        if self.train:
            return int(torch.randint(len(self.entries), ()))
        return (index + 1) % len(self.entries)  # deterministic at test time

    def __getitem__(self, index):
        """Item ``index`` as a dict: ``videos``, ``labels``, ``indices`` (of the video actually loaded)
        and ``bad_samples`` (messages of the unreadable videos it replaced, with ``skip_bad``)."""
        bad_samples = []
        for _ in range(MAX_REPLACEMENTS + 1):
            if index not in self.bad_messages:
                try:
                    videos = self.load(index)
                    return {'videos': videos, 'labels': self.entries[index].label, 'indices': index,
                            'bad_samples': bad_samples}
                except VideoReadError as error:
                    if not self.skip_bad:
                        raise
                    self.bad_messages[index] = str(error)
            bad_samples.append(self.bad_messages[index])
            index = self._replacement(index)
        raise VideoReadError(f'{MAX_REPLACEMENTS} replacement videos in a row were unreadable '
                             f'(DATA.SKIP_BAD); the last: {bad_samples[-1]}')


def test_views(video, num_frames, num_clips, transform):
    """The deterministic test views of an opened video (anything with ``len`` and ``read(indices)``).

    Returns:
        (uint8 ``[C * K, T, 3, S, S]``, view ``clip * K + crop``; int64 ``[C, T]``: the frames of each
        temporal view).
    """
    views = test_frame_indices(len(video), num_frames, num_clips)  # [C, T]
    crops = transform(video.read(views.flatten()))  # [K, C * T, 3, S, S]
    crops = crops.unflatten(1, (num_clips, num_frames))  # [K, C, T, 3, S, S]
    return crops.transpose(0, 1).flatten(0, 1), views  # [C * K, T, 3, S, S]


def collate_clips(samples):
    """Stack dataset items into a batch: ``videos`` uint8 ``[B, ...]``, ``labels`` and ``indices``
    int64 ``[B]``, and ``bad_samples``: per item, the messages of the unreadable videos it replaced."""
    return {
        'videos': torch.stack([sample['videos'] for sample in samples]),
        'labels': torch.tensor([sample['labels'] for sample in samples], dtype=torch.int64),
        'indices': torch.tensor([sample['indices'] for sample in samples], dtype=torch.int64),
        'bad_samples': [sample['bad_samples'] for sample in samples],
    }
