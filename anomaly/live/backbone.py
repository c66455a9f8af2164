"""The backbone as one Serve deployment: clips from every camera batched into one model call.

``features(clip)`` takes one uint8 ``(T, H, W, 3)`` clip (already resized and
cropped by its reader) and returns its ``(D,)`` feature; ``@serve.batch``
gathers the concurrent calls of all cameras into one ``(B, T, H, W, 3)`` batch
for :class:`~anomaly.extractors.ClipFeatureExtractor` (the same preprocessing
and model as batch extraction and scoring). Replicas take GPUs when asked
(``num_gpus``) and autoscale between ``min_replicas`` and ``max_replicas`` on
the requests in flight.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from ray import serve

logger = logging.getLogger(__name__)


@serve.deployment(name="backbone", max_ongoing_requests=64, logging_config={"enable_access_log": False})
class Backbone:
    def __init__(
        self,
        backbone: str,
        weights: str | None,
        *,
        crop: tuple[int, int] | None,
        clip_len: int | None,
        device: str = "auto",
        expected_weights: str | None = None,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.05,
        torch_threads: int | None = None,
    ) -> None:
        import torch

        from anomaly.extractors import ClipFeatureExtractor
        from anomaly.scoring.single import check_weights

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.extractor = ClipFeatureExtractor(
            backbone,
            None if weights in (None, "none") else weights,
            crop=crop,
            clip_len=clip_len,
            device=device,
        )
        check_weights(weights or "weights", self.extractor.weights_sha256, expected_weights)
        self.features.set_max_batch_size(max_batch_size)
        self.features.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batches = self.clips = 0

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
    async def features(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        batch = np.stack(clips)
        out = await asyncio.to_thread(self.extractor, {"clip": batch})  # the loop stays free to batch
        self.batches += 1
        self.clips += len(clips)
        return list(out["features"])

    def stats(self) -> dict:
        return {"batches": self.batches, "clips": self.clips, "device": str(self.extractor.device)}
