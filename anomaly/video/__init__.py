"""Open one video by URI and stream fixed-length RGB clips from it; no torch anywhere below here.

- :mod:`anomaly.video.reader`: the backend-independent rules (video info, clip sampling,
  the bounded clip buffer, centre crop, time windows);
- :mod:`anomaly.video.pyav`: container files through PyAV/FFmpeg;
- :mod:`anomaly.video.frame_folder`: folders of image files (UCSD, Avenue, ShanghaiTech);
- :mod:`anomaly.video.factory`: :func:`open_video`, the one place that picks a backend.
"""

from anomaly.video.factory import iter_clips, open_video, probe_video
from anomaly.video.frame_folder import DEFAULT_FPS, FrameFolderVideo
from anomaly.video.pyav import READ_BLOCK_SIZE, PyAVVideo
from anomaly.video.reader import (
    Clip,
    FrameSpan,
    VideoHeader,
    VideoInfo,
    VideoReader,
    center_crop,
    clip_starts,
    resized_shape,
    video_id_from_uri,
)

__all__ = [
    "DEFAULT_FPS",
    "READ_BLOCK_SIZE",
    "Clip",
    "FrameFolderVideo",
    "FrameSpan",
    "PyAVVideo",
    "VideoHeader",
    "VideoInfo",
    "VideoReader",
    "center_crop",
    "clip_starts",
    "iter_clips",
    "open_video",
    "probe_video",
    "resized_shape",
    "video_id_from_uri",
]
