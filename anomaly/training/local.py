"""A one-worker fit in one process: the training loop without Ray Train's controller and worker group.

A fit with one worker has nothing to distribute, yet a ``TorchTrainer`` pays a controller actor,
a worker group, a placement group and Ray Data shards before its first step: about 10 s on 2
cores, whatever the model (issue 20's measurement; ``benchmarks/fit_startup.py``). So a
one-worker fit runs the same loop (:func:`anomaly.training.loop.train_loop`) in one Ray task, and
a one-worker Tune trial runs it in the trial itself; several workers go through Ray Train (DDP).

What Ray Train did for the one-worker case is kept here: checkpoints in the same folders
(``RUN_DIR/ray_results/NAME/checkpoint_<time>``, at most :data:`KEEP` of them: the newest and the
best by the run's score), resuming from the newest, and a task
retried on another node after a worker or node loss (``max_failures``).
"""

from __future__ import annotations

import datetime
import logging
import os

import ray
import torch

from anomaly import uris
from anomaly.checkpoints import CHECKPOINT_FILE
from anomaly.training.checkpoints import stored_checkpoints
from anomaly.training.data import local_datasets

logger = logging.getLogger(__name__)

KEEP = 2  # checkpoints kept per run, as Ray Train's CheckpointConfig(num_to_keep=2) of multi-worker fits


def newest(stored: list[tuple[dict, object]]):
    """The newest of ``(summary, checkpoint)`` pairs (:func:`stored_checkpoints`), or None."""
    return max(stored, key=lambda item: item[0]["epoch"])[1] if stored else None


def ranked(stored: list[tuple[dict, object]], attribute: str) -> list:
    """``(summary, checkpoint)`` pairs best first by the run's score (``epoch`` or a metric), then epoch."""
    return sorted(
        stored, key=lambda item: (checkpoint_score(item[0], attribute), item[0]["epoch"]), reverse=True
    )


def checkpoint_score(summary: dict, attribute: str) -> float:
    value = summary["epoch"] if attribute == "epoch" else summary["metrics"].get(attribute)
    return float(value) if value is not None and value == value else float("-inf")


class LocalSession:
    """The loop's session for one worker in this process: cached blocks or Ray Data streams as its
    datasets, checkpoints written to the run's storage, each report handed to ``on_report``.

    The stored checkpoints are listed once, when the session starts (what a retried task resumes
    from); after that the session knows what it wrote and prunes without reading them back.
    """

    rank, world = 0, 1

    def __init__(self, loop_config: dict, storage: str, score_attribute: str, use_gpu: bool, on_report=None):
        self.datasets = local_datasets(loop_config["inputs"])
        self.storage = storage  # RUN_DIR/ray_results/NAME
        self.score_attribute = score_attribute
        self.on_report = on_report
        stored = stored_checkpoints(storage)
        self.resume_from = newest(stored)
        self.kept = [(summary, checkpoint.path) for summary, checkpoint in stored]  # what storage holds
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        if use_gpu and self.device.type != "cuda":
            logger.warning("use_gpu: torch sees no CUDA device here; training on CPU")

    def dataset(self, name: str):
        return self.datasets[name]

    def checkpoint(self):
        return self.resume_from  # the newest stored checkpoint: a retried task resumes from it

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict, folder: str | None) -> None:
        path = None
        if folder is not None:
            path = self._store(metrics, folder)
        if self.on_report is not None:
            self.on_report(metrics, path)

    def _store(self, metrics: dict, folder: str) -> str:
        """Copy the epoch's checkpoint to storage (atomically) and prune to :data:`KEEP`; its path."""
        name = "checkpoint_" + datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S.%f")
        target = uris.join(self.storage, name)
        with open(os.path.join(folder, CHECKPOINT_FILE), "rb") as handle:
            data = handle.read()
        if uris.is_local(target):  # the folder appears whole: written under a hidden name, renamed
            hidden = uris.join(self.storage, f".{name}.tmp")
            uris.write_bytes_atomic(uris.join(hidden, CHECKPOINT_FILE), data)
            os.replace(hidden, target)
        else:  # an object store's PUT is atomic: the "folder" exists once its one object does
            uris.write_bytes_atomic(uris.join(target, CHECKPOINT_FILE), data)
        self.kept.append(({"epoch": int(metrics["epoch"]), "metrics": metrics}, uris.filesystem(target)[1]))
        self._prune()
        return target if uris.is_local(target) else uris.strip_scheme(target)

    def _prune(self) -> None:
        """Keep the :data:`KEEP` best by the run's score and the newest (to resume from), as Ray
        Train's ``CheckpointConfig(num_to_keep=KEEP)`` does for multi-worker fits."""
        keep = {path for _, path in ranked(self.kept, self.score_attribute)[:KEEP]} | {newest(self.kept)}
        fs, _ = uris.filesystem(self.storage)
        for _, path in self.kept:
            if path not in keep:
                fs.rm(path, recursive=True)
        self.kept = [item for item in self.kept if item[1] in keep]


def run_local(loop_config: dict, storage: str, score_attribute: str, use_gpu: bool, on_report=None) -> None:
    """The training loop in this process (a Ray task of :func:`fit`, or a Tune trial)."""
    from anomaly.training.loop import train_loop

    train_loop(loop_config, LocalSession(loop_config, storage, score_attribute, use_gpu, on_report))


def fit_in_task(
    loop_config: dict, storage: str, score_attribute: str, *, use_gpu: bool, cpus: float, max_failures: int
) -> None:
    """Run the one-worker loop in a Ray task with the worker's resources (never on a 0-CPU head);
    a task lost with its process or node is retried ``max_failures`` times, resuming each time."""
    task = ray.remote(run_local).options(
        name="train_worker",
        num_cpus=cpus,
        num_gpus=1 if use_gpu else 0,
        max_retries=max_failures,
    )
    ray.get(task.remote(loop_config, storage, score_attribute, use_gpu))
