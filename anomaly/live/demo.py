"""A toy checkpoint for the live demo, tests and benchmark: a scorer head fitted in seconds on synthetic video.

Not a model of real anomalies: a random-weight ``r3d_18`` at 8 frames x 32x32
(the tests' backbone) extracts clip features of a synthetic street recording
with a ``flash`` event (:mod:`anomaly.synthetic.videos`), and a Sultani MIL
head is fitted on its *causal* windows (label: the newest clip of the window is
in the event) with plain BCE. It separates the synthetic event from the street,
which is all the demo needs to show alarms appearing live. The checkpoint is a
real one (``RUN_DIR/model.pt``, the training store's backbone settings in it),
so ``ray_jobs.live`` and ``ray_jobs.score`` load it like any trained run.
"""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

logger = logging.getLogger(__name__)

DEMO_BACKBONE = {"backbone": "r3d_18", "clip_len": 8, "stride": 8, "crop": [32, 32]}
DEMO_FPS = 16.0
DEMO_SIZE = (64, 80)
DEMO_WINDOW_CLIPS = 5  # 2.5 s at 16 fps, 8-frame clips: the default window (anomaly.scoring.windows)


def demo_video(uri: str, *, num_frames: int = 480, event_frames: tuple[int, int] = (200, 264), seed: int = 0):
    """The synthetic recording the demo plays as a camera (a flash event in ``event_frames``)."""
    from anomaly.synthetic import make_video

    return make_video(
        uri,
        num_frames=num_frames,
        fps=DEMO_FPS,
        height=DEMO_SIZE[0],
        width=DEMO_SIZE[1],
        event="flash",
        interval=event_frames,
        seed=seed,
    )


def fit_demo_checkpoint(run_dir: str, *, seed: int = 0, epochs: int = 300) -> str:
    """Write ``run_dir/model.pt``: a MIL head fitted on causal windows of synthetic recordings."""
    import torch

    from anomaly.checkpoints import checkpoint_payload
    from anomaly.config import TrainConfig
    from anomaly.extraction import ExtractionSettings
    from anomaly.heads import MILScorer
    from anomaly.normalization import fit_statistics
    from anomaly.scoring.single import clip_features
    from anomaly.scoring.windows import window_features

    torch.manual_seed(seed)
    settings = ExtractionSettings(
        backbone=DEMO_BACKBONE["backbone"],
        weights=None,
        clip_len=DEMO_BACKBONE["clip_len"],
        stride=DEMO_BACKBONE["stride"],
        crop=tuple(DEMO_BACKBONE["crop"]),
        device="cpu",
    )
    xs, ys = [], []
    with tempfile.TemporaryDirectory(prefix="live-demo-") as folder:
        # Two recordings, an event in each at a different place: the head learns the event, not the time.
        for k, interval in enumerate(((96, 160), (208, 272))):
            video = demo_video(
                os.path.join(folder, f"Explosion{k:03d}_x264.mp4"),
                num_frames=320,
                event_frames=interval,
                seed=seed + k,
            )
            feats, _, _ = clip_features(video.uri, settings)
            windows = window_features(feats, DEMO_WINDOW_CLIPS, causal=True)
            clip_start = np.arange(len(feats)) * settings.stride
            clip_end = clip_start + settings.clip_len
            label = ((clip_end > interval[0]) & (clip_start < interval[1])).astype(np.float32)
            xs.append(windows)
            ys.append(label)
    x, y = np.concatenate(xs), np.concatenate(ys)
    model = MILScorer(x.shape[1], dropout=0.0)
    model.set_normalization(*fit_statistics(x, "robust"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    weight = torch.where(ty > 0, (ty.numel() - ty.sum()) / ty.sum().clamp(min=1), torch.ones_like(ty))
    model.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy(model(tx), ty, weight=weight)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        scores = model(tx).numpy()
    logger.info(
        "demo head: loss %.3f, event windows score %.2f (min %.2f), others %.2f (max %.2f)",
        float(loss.detach()),
        scores[y > 0].mean(),
        scores[y > 0].min(),
        scores[y == 0].mean(),
        scores[y == 0].max(),
    )
    store = {**DEMO_BACKBONE, "feature_dim": int(x.shape[1]), "weights_sha256": "random"}
    os.makedirs(run_dir, exist_ok=True)
    config = TrainConfig(dropout=0.0)
    torch.save(
        checkpoint_payload(model, config, epoch=epochs, metrics={}, store_metadata=store),
        os.path.join(run_dir, "model.pt"),
    )
    return run_dir
