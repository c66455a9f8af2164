"""Trained-model files: what a checkpoint holds, how to load one, how to score with it.

Torch only, on purpose: scoring a video and evaluating a store need a trained
model but not Ray Train, so this module is what they import, and
``anomaly.training`` (which needs Ray Train) builds on it.

A checkpoint is a plain dict of tensors and primitives (loadable with
``torch.load(..., weights_only=True)``, so a foreign pickle is refused):
``model`` (the state dict), ``feature_dim``, ``config`` (a
:class:`~anomaly.config.TrainConfig` as a dict), plus whatever the trainer adds
(``epoch``, ``metrics``, ``history``, ``store_metadata``; ``optimizer`` only in
the per-epoch training checkpoints, not in the exported ``model.pt``).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from anomaly import uris
from anomaly.config import TrainConfig
from anomaly.errors import AnomalyError, first_line
from anomaly.heads import HEAD_REVISION, Head, build_head
from anomaly.store import StoreMetadata

CHECKPOINT_FILE = "checkpoint.pt"  # one epoch's state inside a Ray Train checkpoint folder
MODEL_FILE = "model.pt"  # the best epoch's model, ``RUN_DIR/model.pt``


def checkpoint_payload(model: torch.nn.Module, config: TrainConfig, **extra: Any) -> dict:
    """A plain dict of the unwrapped model's tensors and primitives (loadable with weights_only=True)."""
    inner = model.module if hasattr(model, "module") else model
    return {
        "model": inner.state_dict(),
        "feature_dim": inner.feature_dim,
        "config": config.to_dict(),
        # What a loader needs to rebuild the head without the trainer (anomaly.heads.build_head).
        "head": {
            "model": config.model,
            "feature_norm": config.feature_norm,
            "dropout": config.dropout,
            "context": getattr(inner, "context", "segment"),
            "ensemble": config.ensemble,
            "revision": HEAD_REVISION,
        },
        **extra,
    }


def load_scorer(uri: str) -> tuple[Head, dict]:
    """Load a trained scorer from a run directory (``RUN_DIR/model.pt``) or a ``.pt`` file/URI."""
    target = uri if uri.endswith(".pt") else uris.join(uri, MODEL_FILE)
    if not uris.exists(target):
        raise AnomalyError(uri, f"no trained model found (expected {target})")
    try:
        payload = torch.load(io.BytesIO(uris.read_bytes(target)), map_location="cpu", weights_only=True)
        config = TrainConfig.from_dict(payload["config"], where=target)
        model = build_head(
            config.model,
            int(payload["feature_dim"]),
            dropout=config.dropout,
            feature_norm=config.feature_norm,
            ensemble=config.ensemble,
            # Checkpoints from before head revisions were recorded are revision 1 (as trained).
            revision=int(payload.get("head", {}).get("revision", 1)),
        )
        model.load_state_dict(payload["model"])
    except AnomalyError:
        raise
    except Exception as exc:  # a refused pickle, a foreign file, a wrong architecture
        raise AnomalyError(target, f"not a checkpoint of this project: {first_line(exc)}") from exc
    return model.eval(), payload


def stored_metadata(payload: dict, where: str = "checkpoint") -> StoreMetadata | None:
    """The training store's metadata a checkpoint carries; None when it was trained without one."""
    data = payload.get("store_metadata")
    return StoreMetadata.from_dict(data, where=where) if data else None


def score_bags(model: Head, features: np.ndarray, batch: int = 512) -> np.ndarray:
    """(N, 32, D) features -> (N, 32) scores, in eval mode, without gradients."""
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # a GPU-trained head
    out = []
    with torch.inference_mode():
        for start in range(0, len(features), batch):
            chunk = torch.from_numpy(
                np.array(features[start : start + batch], dtype=np.float32)
            )  # a writable copy
            out.append(model(chunk.to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 32), dtype=np.float32)
