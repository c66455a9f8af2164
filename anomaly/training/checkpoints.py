"""A training run's checkpoint folders: loading one epoch's, finding the newest, exporting ``model.pt``.

What a checkpoint holds and how a trained model is loaded is :mod:`anomaly.checkpoints` (torch only).
"""

from __future__ import annotations

import csv
import io
import os

import torch
from ray.train import Checkpoint

from anomaly import uris
from anomaly.checkpoints import CHECKPOINT_FILE, MODEL_FILE


def load_checkpoint_payload(checkpoint: Checkpoint) -> dict:
    """The dict a worker saved at one epoch (model, optimizer, epoch, metrics, config, store metadata)."""
    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


def stored_checkpoints(storage: str) -> list[tuple[dict, Checkpoint]]:
    """Every complete epoch checkpoint in ``storage`` (``RUN_DIR/ray_results/NAME``), recorded by Ray
    or not, with a summary of each (``epoch``, ``metrics``). A folder whose file does not load
    (cut short by a kill, or foreign) is skipped."""
    fs, path = uris.filesystem(storage)
    _, filesystem = uris.ray_storage(storage)
    found = []
    for folder in sorted(fs.glob(f"{path.rstrip('/')}/checkpoint_*")):
        try:
            data = fs.cat_file(f"{folder}/{CHECKPOINT_FILE}")
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            summary = {"epoch": int(payload["epoch"]), "metrics": dict(payload.get("metrics") or {})}
        except Exception:  # noqa: BLE001 - missing, cut short or foreign: not a checkpoint to resume from
            continue
        found.append((summary, Checkpoint(path=folder, filesystem=filesystem)))
    return found


def latest_stored_checkpoint(run_dir: str, name: str) -> Checkpoint | None:
    """The newest complete epoch checkpoint in ``RUN_DIR/ray_results/NAME``, recorded by Ray or not.

    Ray persists a checkpoint's folder first and records it in its run snapshot
    (what ``ray.train.get_checkpoint()`` resumes from) a moment later; a run
    killed in between would otherwise start over from an older epoch, or from
    scratch.
    """
    stored = stored_checkpoints(uris.join(run_dir, "ray_results", name))
    return max(stored, key=lambda item: item[0]["epoch"])[1] if stored else None


def export_model(checkpoint: Checkpoint, run_dir: str) -> tuple[dict, str]:
    """Write ``RUN_DIR/model.pt`` from a training checkpoint, without the optimizer state.

    Returns the payload written and the model's URI; ``load_scorer(run_dir)`` reads it back.
    Used at the end of training and by the tuner for the best trial.
    """
    payload = load_checkpoint_payload(checkpoint)
    payload.pop("optimizer", None)
    payload.pop("train_model", None)  # the raw weights behind an EMA, needed only to resume
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    model_uri = uris.join(run_dir, MODEL_FILE)
    uris.write_bytes_atomic(model_uri, buffer.getvalue())
    return payload, model_uri


def write_history(run_dir: str, history: list[dict]) -> None:
    """``RUN_DIR/history.csv`` (one row per epoch) and ``training_curves.png``; nothing if empty."""
    from anomaly.plots import training_curves

    if not history:
        return
    columns = ["epoch", "loss", "val_auc", "val_frame_auc", "val_video_auc", "val_bag_auc", "lr", "steps"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    uris.write_bytes_atomic(uris.join(run_dir, "history.csv"), text.getvalue().encode())
    training_curves(history, uris.join(run_dir, "training_curves.png"))
