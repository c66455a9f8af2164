"""Ground truth: which videos are anomalous, where, and in which split.

Two sources, one shape (``describe(video_id)`` -> the store's split, label,
class, ``[start, end)`` intervals and frame count):

- :mod:`~anomaly.ground_truth.ucf_crime`: UCF-Crime's official annotation and
  split files (:class:`GroundTruth`), bundled with the package;
- the frame-folder research data sets (UCSD Ped1/Ped2, CUHK Avenue,
  ShanghaiTech; :func:`load_dataset` -> :class:`DatasetTruth`), read from their
  published folder layouts: :mod:`~anomaly.ground_truth.discovery` finds the
  videos and label files, :mod:`~anomaly.ground_truth.label_files` parses the
  label formats, :mod:`~anomaly.ground_truth.truth` holds the result,
  :mod:`~anomaly.ground_truth.loaders` holds each data set's rules.

Not named ``datasets``: these are label readers, not PyTorch ``Dataset`` classes.
"""

from anomaly.ground_truth.label_files import (
    intervals_from_labels,
    merge_intervals,
    parse_ucsd_m,
    read_label_array,
    read_mat_intervals,
    read_vol_label,
)
from anomaly.ground_truth.loaders import DATASET_KINDS, DEFAULT_FPS, detect_kind, load_dataset
from anomaly.ground_truth.truth import DatasetTruth, DatasetVideo
from anomaly.ground_truth.ucf_crime import (
    GroundTruth,
    VideoAnnotation,
    bundled_file,
    class_of,
    is_normal,
    read_frame_counts,
    read_temporal_annotations,
    video_id_of,
)

__all__ = [
    "DATASET_KINDS",
    "DEFAULT_FPS",
    "DatasetTruth",
    "DatasetVideo",
    "GroundTruth",
    "VideoAnnotation",
    "bundled_file",
    "class_of",
    "detect_kind",
    "intervals_from_labels",
    "is_normal",
    "load_dataset",
    "merge_intervals",
    "parse_ucsd_m",
    "read_frame_counts",
    "read_label_array",
    "read_mat_intervals",
    "read_temporal_annotations",
    "read_vol_label",
    "video_id_of",
]
