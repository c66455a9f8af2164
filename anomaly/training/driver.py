"""The driver side of a training run: Ray Train set-up, resume, outputs in ``RUN_DIR``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import ray
import ray.data
import ray.train
from ray.train import Checkpoint
from ray.train.torch import TorchTrainer

from anomaly import cluster, uris
from anomaly.cluster import DEFAULT_WAIT_SECONDS
from anomaly.config import TrainConfig, read_yaml, write_yaml
from anomaly.errors import AnomalyError
from anomaly.selection import selects_by_validation
from anomaly.training.checkpoints import (
    export_model,
    latest_stored_checkpoint,
    load_checkpoint_payload,
    stored_checkpoints,
    write_history,
)
from anomaly.training.data import (
    TRAIN_SETS,
    VAL_SET,
    TrainingInputs,
    prepare_inputs,
    train_datasets,
    val_dataset,
)
from anomaly.training.local import fit_in_task, newest, ranked, run_local
from anomaly.training.loop import train_loop_per_worker

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: str
    best_epoch: int
    best_metrics: dict
    history: list[dict]
    model_uri: str


def run_config(
    run_dir: str,
    *,
    name: str,
    max_failures: int,
    callbacks: list | None = None,
    score_attribute: str = "val_auc",
) -> ray.train.RunConfig:
    storage, filesystem = uris.ray_storage(uris.join(run_dir, "ray_results"))
    return ray.train.RunConfig(
        name=name,
        storage_path=storage,
        storage_filesystem=filesystem,
        failure_config=ray.train.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute=score_attribute, checkpoint_score_order="max"
        ),
        callbacks=callbacks,
    )


def data_config() -> ray.train.DataConfig:
    """Train's data settings: the shards keep their blocks' order, so one seed gives one model.

    Ray Data yields finished blocks as they come by default (``preserve_order=False``), so two
    runs with the same seed would see their bags in different orders.
    """
    # Built here rather than by DataConfig.default_ingest_options(), which copies the deprecated
    # exclude_resources option into the new options and so prints Ray Data's deprecation warning.
    current = ray.data.DataContext.get_current().execution_options
    options = ray.data.ExecutionOptions(
        resource_limits=current.resource_limits,
        preserve_order=True,
        verbose_progress=current.verbose_progress,
    )
    return ray.train.DataConfig(datasets_to_split=list(TRAIN_SETS), execution_options=options)


def worker_bundles(num_workers: int, cpus_per_worker: float, use_gpu: bool) -> list[dict[str, float]]:
    """What a fit's workers ask of the cluster, one bundle each."""
    return [{"CPU": cpus_per_worker, "GPU": 1.0 if use_gpu else 0.0}] * num_workers


def check_workers(inputs: TrainingInputs, config: TrainConfig, num_workers: int) -> None:
    """Every worker needs a share of the global batch and of each label's bags."""
    if config.batch_size < num_workers:
        raise AnomalyError(
            "num_workers",
            f"{num_workers} workers cannot share a global batch of {config.batch_size} bags per label "
            "(batch_size is global: raise it or use fewer workers)",
        )
    fewest = min(inputs.num_abnormal, inputs.num_normal)
    if fewest < num_workers:
        raise AnomalyError(
            inputs.store, f"{fewest} training bags of one label cannot be shared by {num_workers} workers"
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
    inputs: TrainingInputs | None = None,
    callbacks: list | None = None,
    register: tuple | None = None,
    on_report: Callable[[dict, str | None], None] | None = None,
    name: str = "train",
    wait_for_resources: float = DEFAULT_WAIT_SECONDS,
    ray_train: bool | None = None,
) -> TrainResult:
    """Train with Ray Train and write ``RUN_DIR/model.pt``, config and curves.

    ``model.pt`` holds the weights ``config.selection`` chooses (:mod:`anomaly.selection`): the
    final EMA or last weights of the fixed budget, or the best validation epoch.

    The store streams to the workers through Ray Data; ``inputs`` (the split and statistics,
    :func:`prepare_inputs`) is computed here unless given (Tune computes it once for all trials).

    One worker runs the loop in a Ray task (:mod:`anomaly.training.local`), or in this process
    when ``on_report`` is given (a Tune trial: called with each epoch's metrics and checkpoint
    path); ``callbacks`` and ``register`` concern Ray Train's worker groups, i.e. several workers.
    Workers the cluster does not hold yet are waited for (the autoscaler asked), at most
    ``wait_for_resources`` seconds. ``ray_train`` True runs even one worker through Ray Train
    (None: only several workers do).
    """
    if uris.is_local(run_dir):
        run_dir = os.path.abspath(run_dir)
    _refuse_other_settings(run_dir, config)
    if inputs is None:  # else a Tune trial: its search waited, and it holds its worker's resources
        cluster.wait_for_resources(
            worker_bundles(num_workers, cpus_per_worker, use_gpu), wait_for_resources, what="training"
        )
        inputs = prepare_inputs(store, config)
    check_workers(inputs, config, num_workers)
    by_validation = selects_by_validation(config.selection)
    score_attribute = "val_auc" if by_validation else "epoch"
    loop_config = {"train": config.to_dict(), "inputs": inputs, "register": register}
    write_yaml(uris.join(run_dir, "config.yaml"), config.to_dict())
    if num_workers == 1 and not ray_train:
        # Nothing to distribute: the loop in one task (or in this Tune trial), without Train's start-up.
        storage = uris.join(run_dir, "ray_results", name)
        if on_report is not None:
            run_local(loop_config, storage, score_attribute, use_gpu, on_report)
        else:
            fit_in_task(
                loop_config,
                storage,
                score_attribute,
                use_gpu=use_gpu,
                cpus=cpus_per_worker,
                max_failures=max_failures,
            )
        return _write_local_outputs(run_dir, storage, score_attribute)
    # Ray's latest checkpoint, or a newer one on storage that Ray had not recorded when killed.
    resume_from = latest_stored_checkpoint(run_dir, name)
    loop_config["resume_from"] = resume_from
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=run_config(
            run_dir,
            name=name,
            max_failures=max_failures,
            callbacks=callbacks,
            score_attribute=score_attribute,
        ),
        # The validation set goes through Ray Train too (unsplit: every worker reads it and scores
        # its share, anomaly.training.loop.score_validation), so a restarted worker group gets it
        # afresh; a split made in the driver was consumed by the first group and hung a restart.
        datasets={**train_datasets(inputs), VAL_SET: val_dataset(inputs)},
        dataset_config=data_config(),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    return _write_outputs(run_dir, result, resume_from, by_validation=by_validation)


def _refuse_other_settings(run_dir: str, config: TrainConfig) -> None:
    previous = uris.join(run_dir, "config.yaml")
    if uris.exists(previous):
        if TrainConfig.from_dict(read_yaml(previous), where=previous) != config:
            raise AnomalyError(
                run_dir, "holds a run with other settings; resume with the same config or use a new `out`"
            )


def _write_local_outputs(run_dir: str, storage: str, score_attribute: str) -> TrainResult:
    """``model.pt`` and curves of a one-worker fit, from the checkpoints it stored."""
    stored = stored_checkpoints(storage)
    if not stored:
        raise AnomalyError(run_dir, "training produced no checkpoint")
    return _export(run_dir, ranked(stored, score_attribute)[0][1], newest(stored))


def _export(run_dir: str, best: Checkpoint, latest: Checkpoint) -> TrainResult:
    history = load_checkpoint_payload(latest).get("history", [])
    payload, model_uri = export_model(best, run_dir)
    write_history(run_dir, history)
    return TrainResult(
        run_dir=run_dir,
        best_epoch=int(payload["epoch"]),
        best_metrics=payload["metrics"],
        history=history,
        model_uri=model_uri,
    )


def _write_outputs(
    run_dir: str, result, resume_from: Checkpoint | None = None, *, by_validation: bool = True
) -> TrainResult:
    # resume_from is the latest when it was a finished run's last checkpoint that Ray had not recorded.
    latest = max(
        (c for c in (result.checkpoint, resume_from) if c is not None),
        key=lambda c: int(load_checkpoint_payload(c)["epoch"]),
        default=None,
    )
    best = (result.get_best_checkpoint(metric="val_auc", mode="max") if by_validation else None) or latest
    if best is None:
        raise AnomalyError(run_dir, "training produced no checkpoint")
    return _export(run_dir, best, latest)
