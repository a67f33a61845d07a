"""The face front end: from a raw video (a phone recording, an interview, a webcam clip) to square face
crops like the benchmarks' (docs/data.md, section 18).

A face detector whose model ships with its package (dlib's HOG detector by default; YuNet from an ONNX
file the user gives) runs on every ``detect_every``-th frame; the largest, most persistent face is
followed through the video, its boxes interpolated across short misses (up to ``max_gap`` frames) and
smoothed over time; frames in longer stretches without that face have no crop and are left out (the
tools report them); a video without any face raises ``NoFaceError``. Each crop is a square of ``margin``
x the face, padded with black beyond the frame's edge and resized to ``size`` px.

Used by ``scripts/prepare_faces.py`` (crops written as frame folders and a list) and by
``scripts/predict.py --faces`` (crops in memory, before the test-time sampling).
"""
from datasets.faces.front_end import (FaceSettings, FaceTrack, FaceVideo, NoFaceError, add_face_arguments,
                                      build_face_detector, crop_chunks, face_settings, follow_face_in_video,
                                      frame_file_name)

__all__ = ['FaceSettings', 'FaceTrack', 'FaceVideo', 'NoFaceError', 'add_face_arguments', 'build_face_detector',
           'crop_chunks', 'face_settings', 'follow_face_in_video', 'frame_file_name']
