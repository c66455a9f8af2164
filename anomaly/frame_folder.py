"""Kept for imports made before the ``anomaly.video`` package: see :mod:`anomaly.video.frame_folder`."""

from anomaly.video.frame_folder import (  # noqa: F401
    DEFAULT_FPS,
    IMAGE_EXTENSIONS,
    FrameFolderVideo,
    folder_has_frames,
    is_image_name,
    list_frames,
    natural_key,
)
