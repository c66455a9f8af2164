"""Synthetic feature stores with a known, learnable anomaly: for tests, benchmarks and the quick demo.

Each video is a bag of 32 segment features: a per-video "scene" vector plus
per-segment noise. In anomalous videos the segments that overlap the annotated
frame interval also carry a shared "anomaly" direction, so the MIL scorer can
only find it by ranking instances, exactly as on real data.
"""

from __future__ import annotations

import numpy as np

from anomaly import store as feature_store
from anomaly.segments import NUM_SEGMENTS, frame_segments, l2_normalize

SYNTHETIC_CLASSES = ("Explosion", "Fighting", "Stampede")


def synthetic_rows(
    *,
    num_train: int = 40,
    num_test: int = 20,
    feature_dim: int = 64,
    signal: float = 1.5,
    seed: int = 0,
    backbone: str = "synthetic",
    crops: int = 1,
    crop_noise: float = 0.5,
) -> list[dict]:
    """Half normal, half anomalous videos per split; anomalies span 10–30 % of a video.

    ``crops > 1``: a ten-crop store's rows (:mod:`anomaly.crops`): every crop is the
    video's segments plus its own noise (``crop_noise``), L2-normalised on its own,
    in ``features_crops``; ``features`` is their mean.
    """
    rng = np.random.default_rng(seed)
    direction = l2_normalize(rng.normal(size=feature_dim))
    rows = []
    for split, count in (("train", num_train), ("test", num_test)):
        for index in range(count):
            anomalous = index % 2 == 1
            num_frames = int(rng.integers(300, 1500))
            scene = rng.normal(size=feature_dim)
            feats = scene + 1.0 * rng.normal(size=(NUM_SEGMENTS, feature_dim))
            feats = l2_normalize(feats) * np.sqrt(feature_dim) / 4
            intervals: list[list[int]] = []
            if anomalous:
                length = int(num_frames * rng.uniform(0.1, 0.3))
                start = int(rng.integers(0, num_frames - length))
                intervals = [[start, start + length]]
                hit = np.unique(frame_segments(num_frames)[start : start + length])
                feats[hit] += signal * direction * np.sqrt(feature_dim) / 4
            per_crop = None
            if crops > 1:
                noise = (
                    crop_noise
                    * rng.normal(size=(crops, NUM_SEGMENTS, feature_dim))
                    * np.sqrt(feature_dim)
                    / 4
                )
                per_crop = l2_normalize(feats[None] + noise)
            klass = SYNTHETIC_CLASSES[index // 2 % len(SYNTHETIC_CLASSES)] if anomalous else "Normal"
            video_id = f"{klass}{index:03d}_{split}" if anomalous else f"Normal_Videos_{index:03d}_{split}"
            rows.append(
                {
                    "video_id": video_id,
                    "split": split,
                    "label": int(anomalous),
                    "anomaly_class": klass,
                    "num_frames": num_frames,
                    "anomaly_intervals": intervals,
                    "backbone": backbone,
                    "features": l2_normalize(feats) if per_crop is None else per_crop.mean(axis=0),
                    "features_crops": per_crop,
                    "fps": 30.0,
                    "source_uri": None,
                }
            )
    return rows


def make_feature_store(uri: str, *, rows_per_part: int = 64, **kwargs) -> str:
    """Write a synthetic store (see :func:`synthetic_rows` for the knobs) and its metadata."""
    rows = synthetic_rows(**kwargs)
    feature_store.ensure_metadata(
        uri,
        feature_store.StoreMetadata(
            backbone=rows[0]["backbone"],
            feature_dim=int(rows[0]["features"].shape[-1]),
            source="synthetic",
            random_weights=True,
            crops=kwargs.get("crops") if kwargs.get("crops", 1) > 1 else None,
        ),
    )
    for start in range(0, len(rows), rows_per_part):
        feature_store.write_rows(uri, rows[start : start + rows_per_part])
    return uri
