"""One Tune trial: a training run, its metrics forwarded to Tune, its workers released when stopped.

Each trial is a function trainable that runs :func:`anomaly.training.fit`. With one worker (the
default) the training loop runs in the trial's own process and reports each epoch to Tune
(:func:`report_epoch`): no Train controller or worker group per trial. With several workers it is
a ``TorchTrainer`` with a ``TuneReportCallback`` that forwards every epoch's metrics to Tune.

Why :class:`ReleaseStoppedTrials` exists: when ASHA stops a trial, Tune ends the trial's actor,
and its Ray Train controller dies with it without shutting down its worker group. Train's own
clean-up of that group asks the State API (the dashboard) whether the controller is alive;
without a dashboard (``ray.init(include_dashboard=False)``, tests) it cannot tell, and the
group's placement group stays reserved until the search's driver exits, so the next trials'
workers wait for CPUs that never come. So rank 0 of every trial's Train run registers its
placement group (``ray.util.get_current_placement_group``) with a small actor, and a Tune
callback on the driver removes a trial's groups (``ray.util.remove_placement_group``) when the
trial ends, fails or is restarted. Public Ray APIs only; harmless where Train cleaned up itself.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from anomaly import uris
from anomaly.cluster import bookkeeping_cpus
from anomaly.config import TrainConfig
from anomaly.tuning.spec import CV_METRIC

logger = logging.getLogger(__name__)

TIME_ATTR = "epochs_done"  # epochs finished in a trial's training run; ASHA's clock


class EpochReportCallback(TuneReportCallback):
    """``TuneReportCallback`` that also reports ``epochs_done`` (ASHA's clock; survives Train resumes)."""

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and "epoch" in metrics[0]:
            first = {**metrics[0], TIME_ATTR: int(metrics[0]["epoch"]) + 1}
            metrics = [first, *metrics[1:]]
        super().after_report(run_context, metrics, checkpoint)


@ray.remote(num_cpus=0)  # worker_groups asks for cluster.bookkeeping_cpus(): off a 0-CPU head
class WorkerGroups:
    """The placement groups of each trial's Train worker groups, so the driver can release them."""

    def __init__(self) -> None:
        self.groups: dict[str, list] = {}
        self.ended: set[str] = set()

    def register(self, trial_id: str, group) -> bool:
        """False (and the group released) when the trial has already ended: do not train."""
        if group is None:
            return True
        if trial_id in self.ended:
            _remove(group)
            return False
        self.groups.setdefault(trial_id, []).append(group)
        return True

    def release(self, trial_id: str, ended: bool) -> int:
        """Remove the trial's groups; ``ended`` refuses later ones (a restarted trial may register)."""
        if ended:
            self.ended.add(trial_id)
        groups = self.groups.pop(trial_id, [])
        for group in groups:
            _remove(group)
        return len(groups)


def _remove(group) -> None:
    try:
        ray.util.remove_placement_group(group)
    except Exception as exc:  # noqa: BLE001 - already removed by Train's own shutdown
        logger.debug("placement group %s: %s", group.id, exc)


def worker_groups(name: str):
    """The search's :class:`WorkerGroups` actor (named, so a resumed search's callback finds it)."""
    return WorkerGroups.options(name=name, get_if_exists=True, num_cpus=bookkeeping_cpus()).remote()


class ReleaseStoppedTrials(tune.Callback):
    """On the Tune driver: release a trial's Train worker groups when it ends, errs or restarts.

    It keeps the registry's name, not its handle: Tune saves its callbacks with the search, and
    a resumed search (a new driver) has a new registry of the same name.
    """

    def __init__(self, registry_name: str) -> None:
        self.registry_name = registry_name

    def _release(self, trial, ended: bool) -> None:
        registry = worker_groups(self.registry_name)
        count = ray.get(registry.release.remote(trial.trial_id, ended))
        if count:
            logger.debug("trial %s: released %d Train worker group(s)", trial.trial_id, count)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._release(trial, ended=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._release(trial, ended=True)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._release(trial, ended=False)


@dataclass(frozen=True)
class TrialInputs:
    """What every trial needs besides its config; ``data`` is the shared :class:`TrainingInputs`."""

    store: str
    out: str
    data: Any
    resources: dict  # fit's placement keywords: num_workers, use_gpu, cpus_per_worker, max_failures
    registry: Any = None  # a WorkerGroups actor
    # The driver's RAY_TRAIN_* settings: Train forwards them from its driver (here, the trial) to
    # its controller and workers, but a trial's process does not inherit the Tune driver's env.
    train_env: dict = field(default_factory=dict)
    folds: tuple = ()  # cross-validation: one TrainingInputs per fold (that fold held out)


def report_epoch(metrics: dict, checkpoint_path: str | None) -> None:
    """A one-worker trial's epoch to Tune, as :class:`EpochReportCallback` forwards Train's reports."""
    extra = {TIME_ATTR: int(metrics["epoch"]) + 1}
    if checkpoint_path is not None:
        extra[CHECKPOINT_PATH_KEY] = checkpoint_path
    tune.report({**metrics, **extra})


def _ignore(metrics: dict, checkpoint_path: str | None) -> None:
    """A fold's epochs are not the trial's: only the folds' mean is reported to Tune."""


def cross_validate(config: TrainConfig, inputs: TrialInputs, trial_id: str) -> None:
    """Train one model per fold (that fold held out) and report the held-out folds' mean bag AUC.

    Each fold's model is the one its run exports (the EMA or last weights of the fixed budget,
    or its best validation epoch), scored on its held-out videos' video labels (training videos
    have no frame labels) by :func:`anomaly.metrics.bag_auc` (mean top-3 segment score). One report at the end: ``cv_auc`` (the mean), ``cv_auc_std``.
    """
    from anomaly.training import fit

    aucs, losses = [], []
    for k, data in enumerate(inputs.folds):
        result = fit(
            inputs.store,
            uris.join(inputs.out, "trials", trial_id, f"fold{k}"),
            config,
            **inputs.resources,
            inputs=data,
            on_report=_ignore if inputs.resources["num_workers"] == 1 else None,
        )
        aucs.append(float(result.best_metrics["val_bag_auc"]))
        losses.append(float(result.best_metrics["loss"]))
    mean = float(np.mean(aucs))
    tune.report(
        {
            CV_METRIC: mean,
            "cv_auc_std": float(np.std(aucs)),
            "val_auc": mean,
            "val_bag_auc": mean,
            "loss": float(np.mean(losses)),
            "epoch": config.max_epochs - 1,
            TIME_ATTR: config.max_epochs,
            "folds": len(aucs),
        }
    )


def run_trial(config: dict, inputs: TrialInputs) -> None:
    """Tune's function trainable: one training run with this trial's settings.

    It trains into ``OUT/trials/TRIAL_ID`` (a full RUN_DIR when the trial runs to its end;
    a re-started trial resumes from its last checkpoint there). A one-worker trial runs the loop
    in the trial's own process (its resources are the worker's); several workers are a Ray Train run.
    """
    from anomaly.training import fit

    trial_id = tune.get_context().get_trial_id()
    os.environ.update(inputs.train_env)
    train_config = TrainConfig.from_dict(config, where=f"trial {trial_id}")
    if inputs.folds:
        cross_validate(train_config, inputs, trial_id)
        return
    if inputs.resources["num_workers"] == 1:
        fit(
            inputs.store,
            uris.join(inputs.out, "trials", trial_id),
            train_config,
            **inputs.resources,
            inputs=inputs.data,
            on_report=report_epoch,
        )
        return
    fit(
        inputs.store,
        uris.join(inputs.out, "trials", trial_id),
        train_config,
        **inputs.resources,
        inputs=inputs.data,
        callbacks=[EpochReportCallback()],
        register=None if inputs.registry is None else (inputs.registry, trial_id),
        name="train",
    )
