"""Pixel masks of the frame-folder data sets' test videos: one ``(H, W)`` bool array per frame.

Pixel masks (``mask_uri``, :func:`iter_masks`): a folder of mask images in
natural order (UCSD ``Test001_gt/``; nonzero = anomalous), a ``(T, H, W)``
``.npy`` (ShanghaiTech ``test_pixel_mask``) or an Avenue ``N_label.mat``
(``volLabel``). One mask is held at a time (the ``.mat`` format is loaded whole).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomaly import uris
from anomaly.errors import AnomalyError
from anomaly.ground_truth import read_vol_label
from anomaly.video.frame_folder import list_frames


def _mask_image(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("L")) != 0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise AnomalyError(where, f"not a mask image: {exc}") from exc


def iter_masks(mask_uri: str) -> Iterator[np.ndarray]:
    """The pixel masks of a video, one ``(H, W)`` bool array per frame, in frame order."""
    lower = mask_uri.lower().rstrip("/")
    if lower.endswith(".npy"):
        if uris.is_local(mask_uri):
            _, path = uris.filesystem(mask_uri)
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            array = np.load(io.BytesIO(uris.read_bytes(mask_uri)), allow_pickle=False)
        if array.ndim != 3:
            raise AnomalyError(mask_uri, f"pixel masks must be (frames, height, width), got {array.shape}")
        for frame in array:
            yield np.asarray(frame) != 0
        return
    if lower.endswith(".mat"):
        yield from read_vol_label(mask_uri)
        return
    fs, path = uris.filesystem(mask_uri)
    for frame_path in list_frames(fs, path, mask_uri):
        yield _mask_image(fs.cat_file(frame_path), f"{mask_uri}: {frame_path.rsplit('/', 1)[-1]}")


def mask_at(mask_uri: str, index: int) -> np.ndarray | None:
    """The mask of one frame (None past the end); reads only that frame for folders and local ``.npy``."""
    lower = mask_uri.lower().rstrip("/")
    if not lower.endswith((".npy", ".mat")):
        fs, path = uris.filesystem(mask_uri)
        frames = list_frames(fs, path, mask_uri)
        return _mask_image(fs.cat_file(frames[index]), mask_uri) if 0 <= index < len(frames) else None
    for i, mask in enumerate(iter_masks(mask_uri)):
        if i == index:
            return mask
    return None
