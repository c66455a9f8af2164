"""MIL training on Ray Train: balanced bags, DDP, per-epoch validation, checkpoints, early stopping.

The driver reads the store once, carves a stratified validation split from the
train split, computes normalisation statistics on the rest, and puts the arrays
in Ray's object store; every worker trains on its shard of the bags with
Ray Train's DDP (gloo on CPU, nccl on GPU) and reports each epoch.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import ray
import ray.train
import torch
from ray.train import Checkpoint
from ray.train.torch import TorchTrainer

from anomaly import store as feature_store
from anomaly import uris
from anomaly.checkpoints import CHECKPOINT_FILE, MODEL_FILE, checkpoint_payload, score_bags
from anomaly.config import TrainConfig, write_yaml
from anomaly.errors import AnomalyError
from anomaly.losses import mil_loss
from anomaly.metrics import evaluate_frames, video_auc
from anomaly.model import MILScorer

logger = logging.getLogger(__name__)


# --- data -----------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """Arrays every worker needs; small enough to share through Ray's object store."""

    train_features: np.ndarray
    train_labels: np.ndarray
    val: feature_store.Bags
    mean: np.ndarray
    std: np.ndarray
    store_metadata: dict  # StoreMetadata.to_dict() of the store, copied into every checkpoint

    @property
    def feature_dim(self) -> int:
        return int(self.train_features.shape[-1])


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``fraction`` of each label to val, at least one of each where possible."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = min(max(1, round(fraction * len(idx))), len(idx) - 1) if len(idx) > 1 else 0
        val_idx.extend(idx[:n_val])
        train_idx.extend(idx[n_val:])
    return np.sort(np.array(train_idx, dtype=np.int64)), np.sort(np.array(val_idx, dtype=np.int64))


def prepare_data(store: str, config: TrainConfig) -> TrainingData:
    bags = feature_store.load_bags(store, split="train")
    counts = np.bincount(bags.labels, minlength=2)
    if counts[0] < 2 or counts[1] < 2:
        raise AnomalyError(
            store,
            f"training needs at least 2 normal and 2 anomalous train videos, found {counts[0]} normal "
            f"and {counts[1]} anomalous",
        )
    train_idx, val_idx = stratified_split(bags.labels, config.val_fraction, config.seed)
    train = bags.subset(train_idx)
    segments = train.features.reshape(-1, train.feature_dim)
    return TrainingData(
        train_features=train.features,
        train_labels=train.labels,
        val=bags.subset(val_idx),
        mean=segments.mean(axis=0),
        std=segments.std(axis=0),
        store_metadata=meta.to_dict() if (meta := feature_store.read_metadata(store)) else {},
    )


# --- model ---------------------------------------------------------------------------------


def build_model(feature_dim: int, config: TrainConfig, mean: np.ndarray, std: np.ndarray) -> MILScorer:
    model = MILScorer(feature_dim, dropout=config.dropout, feature_norm=config.feature_norm)
    model.set_normalization(
        torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
    )
    return model


# --- the per-worker loop --------------------------------------------------------------------


def validation_metrics(model: MILScorer, val: feature_store.Bags) -> dict[str, float]:
    """Frame AUC where every anomalous val video is annotated, else video AUC (train labels are weak).

    ``val_auc`` is the figure early stopping and Tune use; both parts are reported.
    """
    inner = model.module if hasattr(model, "module") else model
    scores = score_bags(inner, val.features)
    frame_auc = float("nan")
    annotated = all(
        frames > 0 and (label == 0 or intervals)
        for frames, label, intervals in zip(val.num_frames, val.labels, val.intervals, strict=True)
    )
    if annotated:
        frame_auc = evaluate_frames(scores, val.labels, val.num_frames, val.intervals, val.classes)[
            "frame_auc"
        ]
    vid_auc = video_auc(scores, val.labels)
    return {
        "val_frame_auc": frame_auc,
        "val_video_auc": vid_auc,
        "val_auc": frame_auc if annotated else vid_auc,
    }


def train_epoch(model, optimizer, data: TrainingData, config: TrainConfig, epoch: int, device) -> float:
    """One pass over this worker's abnormal bags, each batch paired with as many normal bags."""
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    rng = np.random.default_rng([config.seed, epoch, rank])
    abnormal = np.flatnonzero(data.train_labels == 1)
    normal = np.flatnonzero(data.train_labels == 0)
    # Same number of steps on every rank: DDP all-reduces once per step.
    steps = max(1, math.ceil(len(abnormal) / (config.batch_size * world)))
    abnormal_shard = rng.permutation(abnormal[rank::world] if len(abnormal) >= world else abnormal)
    normal_shard = normal[rank::world] if len(normal) >= world else normal
    model.train()
    total = 0.0
    for step in range(steps):
        take = np.arange(step * config.batch_size, (step + 1) * config.batch_size) % len(abnormal_shard)
        abn = torch.as_tensor(data.train_features[abnormal_shard[take]], device=device)
        nor = torch.as_tensor(data.train_features[rng.choice(normal_shard, config.batch_size)], device=device)
        scores = model(torch.cat([abn, nor]))
        loss = mil_loss(
            scores[: len(abn)],
            scores[len(abn) :],
            loss=config.loss,
            topk=config.topk,
            lambda_smooth=config.lambda_smooth,
            lambda_sparse=config.lambda_sparse,
            lambda_false_alarm=config.lambda_false_alarm,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    return total / steps


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point, run on every worker."""
    config = TrainConfig.from_dict(loop_config["train"])
    data: TrainingData = loop_config["data"]
    if isinstance(data, ray.ObjectRef):
        data = ray.get(data)
    torch.manual_seed(config.seed)
    model = build_model(data.feature_dim, config, data.mean, data.std)
    device = ray.train.torch.get_device()
    optimizer = make_optimizer(model, config)
    start_epoch, best, stale, history = 0, -math.inf, 0, []
    # Resume after a crash or on a re-run with the same --out: Ray's latest checkpoint, or a newer one
    # the driver found on storage that Ray had not yet recorded when the last run was killed.
    states = [
        load_checkpoint_payload(c) for c in (ray.train.get_checkpoint(), loop_config.get("resume_from")) if c
    ]
    state = max(states, key=lambda s: int(s["epoch"]), default=None)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, stale = state["epoch"] + 1, state["best_val_auc"], state["stale_epochs"]
        history = list(state.get("history", []))
    model = ray.train.torch.prepare_model(model)
    rank = ray.train.get_context().get_world_rank()
    for epoch in range(start_epoch, config.max_epochs):
        if stale >= config.patience:
            break
        started = time.perf_counter()
        loss = train_epoch(model, optimizer, data, config, epoch, device)
        epoch_seconds = time.perf_counter() - started
        metrics = validation_metrics(model, data.val)
        score = metrics["val_auc"] if not math.isnan(metrics["val_auc"]) else -loss
        if score > best:
            best, stale = score, 0
        else:
            stale += 1
        metrics.update(
            epoch=epoch,
            loss=loss,
            lr=optimizer.param_groups[0]["lr"],
            best_val_auc=best,
            epoch_seconds=epoch_seconds,
        )
        # Every epoch's metrics travel with the checkpoint: Ray keeps only num_to_keep reports' rows.
        history.append({k: float(v) for k, v in metrics.items()})
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                payload = checkpoint_payload(
                    model,
                    config,
                    optimizer=optimizer.state_dict(),
                    epoch=epoch,
                    best_val_auc=best,
                    stale_epochs=stale,
                    metrics=history[-1],
                    history=history,
                    store_metadata=data.store_metadata,
                )
                torch.save(payload, os.path.join(folder, CHECKPOINT_FILE))
                saved = Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=saved)


# --- the driver -----------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: str
    best_epoch: int
    best_metrics: dict
    history: list[dict]
    model_uri: str


def run_config(
    run_dir: str, *, name: str, max_failures: int, callbacks: list | None = None
) -> ray.train.RunConfig:
    storage = uris.join(run_dir, "ray_results")
    filesystem = None
    if not uris.is_local(run_dir):
        filesystem, storage = uris.pyarrow_filesystem(storage)
    return ray.train.RunConfig(
        name=name,
        storage_path=storage,
        storage_filesystem=filesystem,
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="val_auc", checkpoint_score_order="max"
        ),
        callbacks=callbacks,
    )


def fit(
    store: str,
    run_dir: str,
    config: TrainConfig,
    *,
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 0,
    data: TrainingData | ray.ObjectRef | None = None,
    callbacks: list | None = None,
    name: str = "train",
) -> TrainResult:
    """Train with Ray Train and write ``RUN_DIR/model.pt`` (the best validation epoch), config and curves."""
    if uris.is_local(run_dir):
        run_dir = os.path.abspath(run_dir)
    _refuse_other_settings(run_dir, config)
    if data is None:
        data = prepare_data(store, config)
    data_ref = data if isinstance(data, ray.ObjectRef) else ray.put(data)
    resume_from = latest_stored_checkpoint(run_dir, name)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": config.to_dict(), "data": data_ref, "resume_from": resume_from},
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=run_config(run_dir, name=name, max_failures=max_failures, callbacks=callbacks),
    )
    write_yaml(uris.join(run_dir, "config.yaml"), config.to_dict())
    result = trainer.fit()
    if result.error:
        raise result.error
    return _write_outputs(run_dir, result, resume_from)


def latest_stored_checkpoint(run_dir: str, name: str) -> Checkpoint | None:
    """The newest complete epoch checkpoint in ``RUN_DIR/ray_results/NAME``, recorded by Ray or not.

    Ray persists a checkpoint's folder first and records it in its run snapshot
    (what ``ray.train.get_checkpoint()`` resumes from) a moment later; a run
    killed in between would otherwise start over from an older epoch, or from
    scratch. A folder whose file does not load (cut short by the kill) is skipped.
    """
    storage = uris.join(run_dir, "ray_results", name)
    fs, path = uris.filesystem(storage)
    filesystem = None if uris.is_local(run_dir) else uris.pyarrow_filesystem(storage)[0]
    newest, newest_epoch = None, -1
    for folder in fs.glob(f"{path.rstrip('/')}/checkpoint_*"):
        try:
            data = fs.cat_file(f"{folder}/{CHECKPOINT_FILE}")
            epoch = int(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["epoch"])
        except Exception:  # noqa: BLE001 - missing, cut short or foreign: not a checkpoint to resume from
            continue
        if epoch > newest_epoch:
            newest, newest_epoch = Checkpoint(path=folder, filesystem=filesystem), epoch
    return newest


def _refuse_other_settings(run_dir: str, config: TrainConfig) -> None:
    previous = uris.join(run_dir, "config.yaml")
    if uris.exists(previous):
        from anomaly.config import read_yaml

        if TrainConfig.from_dict(read_yaml(previous), where=previous) != config:
            raise AnomalyError(
                run_dir, "holds a run with other settings; resume with the same config or use a new --out"
            )


def load_checkpoint_payload(checkpoint: Checkpoint) -> dict:
    """The dict a worker saved at one epoch (model, optimizer, epoch, metrics, config, store metadata)."""
    with checkpoint.as_directory() as folder:
        return torch.load(os.path.join(folder, CHECKPOINT_FILE), map_location="cpu", weights_only=True)


def export_model(checkpoint: Checkpoint, run_dir: str) -> tuple[dict, str]:
    """Write ``RUN_DIR/model.pt`` from a training checkpoint, without the optimizer state.

    Returns the payload written and the model's URI; ``load_scorer(run_dir)`` reads it back.
    Used at the end of training and by the tuner for the best trial.
    """
    payload = load_checkpoint_payload(checkpoint)
    payload.pop("optimizer", None)
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
    columns = ["epoch", "loss", "val_auc", "val_frame_auc", "val_video_auc", "lr"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    uris.write_bytes_atomic(uris.join(run_dir, "history.csv"), text.getvalue().encode())
    training_curves(history, uris.join(run_dir, "training_curves.png"))


def _write_outputs(run_dir: str, result, resume_from: Checkpoint | None = None) -> TrainResult:
    # resume_from is the latest when it was a finished run's last checkpoint that Ray had not recorded.
    latest = max(
        (c for c in (result.checkpoint, resume_from) if c is not None),
        key=lambda c: int(load_checkpoint_payload(c)["epoch"]),
        default=None,
    )
    best = result.get_best_checkpoint(metric="val_auc", mode="max") or latest
    if best is None:
        raise AnomalyError(run_dir, "training produced no checkpoint")
    history = load_checkpoint_payload(latest).get("history", []) if latest else []
    payload, model_uri = export_model(best, run_dir)
    write_history(run_dir, history)
    return TrainResult(
        run_dir=run_dir,
        best_epoch=int(payload["epoch"]),
        best_metrics=payload["metrics"],
        history=history,
        model_uri=model_uri,
    )
