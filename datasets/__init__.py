"""Datasets: annotation lists, frame decoding, sampling, augmentation, batch blending and loaders.

``build_dataloaders(config, rank, world_size)`` is the entry point of training and evaluation;
batches hold uint8 videos, which the engine moves to the device and normalises
(``utils.engine.normalize_videos``); ``build_blender`` gives the training batches' mixup / FMix.
"""
from datasets.annotations import AnnotationEntry, AnnotationError, read_annotation_list
from datasets.blending import BatchBlender, build_blender
from datasets.build import DataLoaders, build_dataloaders
from datasets.decoding import VideoReadError
from datasets.video_dataset import VideoDataset

__all__ = ['AnnotationEntry', 'AnnotationError', 'BatchBlender', 'DataLoaders', 'VideoDataset',
           'VideoReadError', 'build_blender', 'build_dataloaders',
           'read_annotation_list']
