"""The per-worker training loop: balanced MIL steps over Ray Data shards, sharded validation.

Every worker runs the same number of optimizer steps per epoch (the config's, see
:meth:`TrainingInputs.steps_per_epoch`) on its share of the config's global batch, so the
recipe is the same with 1 or N DDP workers: only who computes which bags changes.
"""

from __future__ import annotations

import math
import os
import tempfile
import time

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint

from anomaly.checkpoints import CHECKPOINT_FILE, checkpoint_payload, score_bags
from anomaly.config import TrainConfig
from anomaly.crops import score_crop_batch
from anomaly.heads import Head, build_head
from anomaly.losses import config_loss
from anomaly.metrics import bag_auc, evaluate_frames, video_auc
from anomaly.protocols import SNIPPET, store_clip_len
from anomaly.selection import WeightAverage, selects_by_validation
from anomaly.training.checkpoints import load_checkpoint_payload
from anomaly.training.data import VAL_SET, BagStream, TrainingInputs, rank_batch

VAL_BATCH_BAGS = 256


def build_model(feature_dim: int, config: TrainConfig, mean: np.ndarray, std: np.ndarray) -> Head:
    """The head ``config.model`` names, with the train split's normalisation statistics."""
    model = build_head(
        config.model,
        feature_dim,
        dropout=config.dropout,
        feature_norm=config.feature_norm,
        ensemble=config.ensemble,
    )
    model.set_normalization(mean, std)
    return model


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


class RayTrainSession:
    """What the loop needs from Ray Train: rank, shards, device, DDP, checkpoints and reports."""

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()

    def dataset(self, name: str):
        return ray.train.get_dataset_shard(name)

    def checkpoint(self) -> Checkpoint | None:
        return ray.train.get_checkpoint()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict, folder: str | None) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder) if folder else None)


def _shuffle_seed(config: TrainConfig, epoch: int, rank: int, label: int) -> int:
    return int(np.random.SeedSequence([config.seed, epoch, rank, label]).generate_state(1)[0])


def member_loss(model, bags: torch.Tensor, num_abnormal: int, config: TrainConfig) -> torch.Tensor:
    """The configured loss on the logits of every member of the head (summed over an ensemble's)."""
    inner = model.module if hasattr(model, "module") else model
    if inner is model:
        outputs = model.member_outputs(bags)
    else:  # DDP: go through the wrapper's forward so that gradients are synchronised
        outputs = model(bags, member_outputs=True)
    n = num_abnormal
    return sum(config_loss(config, lg[:n], lg[n:], ft[:n], ft[n:]) for lg, ft in outputs)


def train_epoch(
    model, optimizer, inputs: TrainingInputs, config: TrainConfig, epoch: int, session, average=None
):
    """One epoch: ``steps_per_epoch`` steps of ``batch_size`` abnormal + ``batch_size`` normal bags
    in all (this worker's share of each). Returns (mean loss, optimizer steps)."""
    rank, world, device = session.rank, session.world, session.device
    share = rank_batch(config.batch_size, world, rank)
    streams = [
        BagStream(session.dataset(name), share, _shuffle_seed(config, epoch, rank, label))
        for label, name in ((1, "abnormal"), (0, "normal"))
    ]
    # DDP averages gradients over workers; weighting each worker's mean loss by its share of the
    # global batch makes that average the gradient of the global batch's mean loss.
    weight = share * world / config.batch_size
    steps = inputs.steps_per_epoch(config)
    model.train()
    total = 0.0
    for _ in range(steps):
        abn, nor = (torch.from_numpy(stream.take()).to(device) for stream in streams)
        loss = member_loss(model, torch.cat([abn, nor]), len(abn), config)
        optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()
        optimizer.step()
        if average is not None:
            average.update(model.module if hasattr(model, "module") else model)
        total += float(loss.detach())
    return total / steps, steps


def _gather(value) -> list:
    """Every worker's ``value`` (torch.distributed when there are several workers)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, value)
        return out
    return [value]


def score_validation(model: Head, shard, rank: int = 0, world: int = 1) -> dict:
    """Score this worker's part of the validation videos (every ``world``-th record batch from
    ``rank``; the whole set read by every worker, none dropped), streamed in record batches."""
    inner = model.module if hasattr(model, "module") else model
    part = {"video_ids": [], "scores": [], "labels": [], "num_frames": [], "intervals": [], "classes": []}
    for i, batch in enumerate(shard.iter_batches(batch_size=VAL_BATCH_BAGS, batch_format="pyarrow")):
        if i % world != rank:
            continue
        part["scores"].append(score_crop_batch(score_bags, inner, batch))  # crop scores averaged, if any
        part["video_ids"].extend(batch.column("video_id").to_pylist())
        part["labels"].extend(batch.column("label").to_pylist())
        part["num_frames"].extend(-1 if n is None else n for n in batch.column("num_frames").to_pylist())
        part["intervals"].extend(
            [tuple(iv) for iv in ivs or []] for ivs in batch.column("anomaly_intervals").to_pylist()
        )
        part["classes"].extend(batch.column("anomaly_class").to_pylist())
    part["scores"] = np.concatenate(part["scores"]) if part["scores"] else np.zeros((0, 32), np.float32)
    return part


def validation_metrics(parts: list[dict], clip_len: int = SNIPPET) -> dict[str, float]:
    """Frame AUC where every anomalous val video is annotated, else video AUC (train labels are weak).

    ``val_auc`` is the figure early stopping and Tune use; both parts are reported. Frames are
    mapped onto segments with the store's ``clip_len``, as evaluation does. Without validation
    videos (``val_fraction: 0``) every figure is NaN.
    """
    order = sorted(
        ((vid, p, i) for p in parts for i, vid in enumerate(p["video_ids"])), key=lambda item: item[0]
    )
    if not order:
        nan = float("nan")
        return {"val_frame_auc": nan, "val_video_auc": nan, "val_bag_auc": nan, "val_auc": nan}
    scores = np.stack([p["scores"][i] for _, p, i in order]) if order else np.zeros((0, 32))
    labels = np.array([p["labels"][i] for _, p, i in order], dtype=np.int64)
    num_frames = np.array([p["num_frames"][i] for _, p, i in order], dtype=np.int64)
    intervals = [p["intervals"][i] for _, p, i in order]
    classes = [p["classes"][i] for _, p, i in order]
    frame_auc = float("nan")
    annotated = all(
        frames > 0 and (label == 0 or ivs)
        for frames, label, ivs in zip(num_frames, labels, intervals, strict=True)
    )
    if annotated:
        frame_auc = evaluate_frames(scores, labels, num_frames, intervals, classes, clip_len=clip_len)[
            "frame_auc"
        ]
    vid_auc = video_auc(scores, labels)
    return {
        "val_frame_auc": frame_auc,
        "val_video_auc": vid_auc,
        "val_bag_auc": bag_auc(scores, labels),
        "val_auc": frame_auc if annotated else vid_auc,
    }


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point, run on every worker."""
    train_loop(loop_config, RayTrainSession())


def train_loop(loop_config: dict, session) -> None:
    """The training run of one worker: resume, epochs of balanced steps, validation, checkpoints.

    ``session`` is a :class:`RayTrainSession` (a Ray Train worker) or an
    :class:`anomaly.training.local.LocalSession` (a one-worker fit in one process).
    """
    config = TrainConfig.from_dict(loop_config["train"])
    inputs: TrainingInputs = loop_config["inputs"]
    register = loop_config.get("register")
    rank, world = session.rank, session.world
    if register is not None and rank == 0:
        # Tune releases a stopped trial's worker group through this (anomaly.tuning.trial).
        registry, key = register
        if not ray.get(registry.register.remote(key, ray.util.get_current_placement_group())):
            return
    torch.manual_seed(config.seed)
    model = build_model(inputs.feature_dim, config, inputs.mean, inputs.std)
    optimizer = make_optimizer(model, config)
    average = WeightAverage(model, config.ema_decay) if config.selection == "ema" else None
    early_stopping = selects_by_validation(config.selection)  # else: the fixed budget of max_epochs
    start_epoch, best, stale, history = 0, -math.inf, 0, []
    # Resume after a crash or on a re-run with the same --out: Ray's latest checkpoint, or a newer one
    # the driver found on storage that Ray had not yet recorded when the last run was killed.
    states = [load_checkpoint_payload(c) for c in (session.checkpoint(), loop_config.get("resume_from")) if c]
    state = max(states, key=lambda s: int(s["epoch"]), default=None)
    if state is not None:
        model.load_state_dict(state.get("train_model", state["model"]))
        if average is not None:
            average.load_state_dict(state["model"])
            average.updates = int(state.get("ema_updates", 0))
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, stale = state["epoch"] + 1, state["best_val_auc"], state["stale_epochs"]
        history = list(state.get("history", []))
    model = session.prepare(model)  # on the worker's device (a GPU with --use-gpu)
    if average is not None:
        average.model.to(session.device)
    val_shard = session.dataset(VAL_SET)
    clip_len = store_clip_len(inputs.store_metadata)
    for epoch in range(start_epoch, config.max_epochs):
        if early_stopping and stale >= config.patience:
            break
        started = time.perf_counter()
        loss, steps = train_epoch(model, optimizer, inputs, config, epoch, session, average)
        epoch_seconds = time.perf_counter() - started
        scored = average.model if average is not None else model  # the weights the run exports
        metrics = validation_metrics(_gather(score_validation(scored, val_shard, rank, world)), clip_len)
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
            steps=steps,
            bags_per_second=2 * steps * config.batch_size / max(epoch_seconds, 1e-9),
        )
        # Every epoch's metrics travel with the checkpoint: Ray keeps only num_to_keep reports' rows.
        history.append({k: float(v) for k, v in metrics.items()})
        with tempfile.TemporaryDirectory() as folder:
            saved = None  # the folder holding this epoch's checkpoint (rank 0 writes it)
            if rank == 0:
                extra = {}
                if average is not None:  # the raw weights and the EMA's count, to resume exactly
                    inner = model.module if hasattr(model, "module") else model
                    extra = {"train_model": inner.state_dict(), "ema_updates": average.updates}
                payload = checkpoint_payload(
                    scored,
                    config,
                    **extra,
                    optimizer=optimizer.state_dict(),
                    epoch=epoch,
                    best_val_auc=best,
                    stale_epochs=stale,
                    metrics=history[-1],
                    history=history,
                    store_metadata=inputs.store_metadata,
                )
                torch.save(payload, os.path.join(folder, CHECKPOINT_FILE))
                saved = folder
            session.report(metrics, saved)
