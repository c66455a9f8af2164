"""Hyperparameter search with Ray Tune over the Ray Train trainer: YAML search spaces, ASHA, results.

A search file has up to three sections (any other top-level key is an error)::

    base:                       # fixed TrainConfig keys for every trial (the rest: built-in defaults)
      max_epochs: 40
    search:                     # TrainConfig key -> exactly one distribution
      lr: {loguniform: [1.0e-4, 1.0e-2]}
      lambda_sparse: {loguniform: [1.0e-6, 1.0e-2], or_zero: true}   # 0 with probability 1/4
      loss: {choice: [sultani, topk]}
      topk: {randint: [1, 9]}                                        # 1..8 (upper bound excluded)
    tune:                       # how to search (every key optional)
      num_samples: 20
      max_concurrent: 4
      asha: {max_t: 40, grace_period: 5, reduction_factor: 3}

Distributions map one to one onto ``ray.tune``: ``uniform: [lo, hi]``, ``quniform: [lo, hi, q]``,
``loguniform: [lo, hi]``, ``qloguniform: [lo, hi, q]``, ``randint: [lo, hi]`` (hi excluded),
``qrandint: [lo, hi, q]`` (hi included), ``lograndint: [lo, hi]`` (hi excluded), ``choice: [a, b, …]``
and ``grid: [a, b, …]`` (every value in every sample). ``or_zero: true`` (or a probability in
(0, 1)) next to ``loguniform`` draws exactly 0 with that probability (true = 0.25): log-uniform
weights "including 0", for terms the search may switch off.

A flat file of TrainConfig keys (``tune_configs/default.yaml``, what ``ray_jobs.train --config``
takes) is a search without a ``search:`` section: a single trial of those settings.

Each trial is a function trainable that runs :func:`anomaly.training.fit` (a ``TorchTrainer``)
with a ``TuneReportCallback`` that forwards every epoch's metrics to Tune. The store is read once
by the driver and shared with every trial through Ray's object store.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import yaml

from anomaly import uris
from anomaly.config import TrainConfig, read_yaml, write_yaml
from anomaly.errors import AnomalyError

logger = logging.getLogger(__name__)

EXPERIMENT = "tune"  # Tune's experiment folder under OUT/ray_results
TIME_ATTR = "epochs_done"  # epochs finished in a trial's training run; ASHA's clock
SECTIONS = ("base", "search", "tune")
METRICS = ("val_auc", "val_frame_auc", "val_video_auc", "loss")
# The validation split and normalisation are prepared once from the base config and shared.
NOT_SEARCHABLE = ("seed", "val_fraction")
OR_ZERO_DEFAULT = 0.25
# name -> number of arguments (None: a non-empty list of values)
DISTRIBUTIONS: dict[str, int | None] = {
    "uniform": 2,
    "quniform": 3,
    "loguniform": 2,
    "qloguniform": 3,
    "randint": 2,
    "qrandint": 3,
    "lograndint": 2,
    "choice": None,
    "grid": None,
}


# --- the search file ------------------------------------------------------------------------


@dataclass(frozen=True)
class AshaSettings:
    """ASHA early stopping on ``epochs_done``; ``max_t`` defaults to the base ``max_epochs``."""

    max_t: int | None = None
    grace_period: int = 1
    reduction_factor: float = 3.0


@dataclass(frozen=True)
class TuneSettings:
    num_samples: int = 1
    max_concurrent: int | None = None  # None: as many trials as the cluster's CPUs/GPUs hold now
    metric: str = "val_auc"
    mode: str = "max"
    seed: int | None = 0  # of the random search; null for a different search every run
    driver_cpus: float = 1.0  # CPUs of each trial's driver (the function trainable), besides its workers
    asha: AshaSettings | None = field(default_factory=AshaSettings)  # asha: false turns it off


@dataclass(frozen=True)
class SearchSpec:
    """A parsed search file: fixed settings, the distributions and how to search."""

    base: TrainConfig
    search: dict[str, dict]
    tune: TuneSettings
    source: str = "defaults"

    @property
    def searched(self) -> list[str]:
        return list(self.search)

    @property
    def max_t(self) -> int:
        return int(self.tune.asha.max_t or self.base.max_epochs) if self.tune.asha else self.base.max_epochs

    def param_space(self) -> dict[str, Any]:
        """Tune's ``param_space``: every TrainConfig key, fixed or a ``ray.tune`` domain."""
        space: dict[str, Any] = self.base.to_dict()
        for name, spec in self.search.items():
            space[name] = to_domain(name, spec, where=self.source)
        return space

    def to_dict(self) -> dict[str, Any]:
        """The normalised file (all three sections), as written to ``OUT/search.yaml``."""
        base = {k: v for k, v in self.base.to_dict().items() if k not in self.search}
        return {"base": base, "search": self.search, "tune": dataclasses.asdict(self.tune)}


def _check_keys(values: dict, known, where: str, section: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise AnomalyError(
            where,
            f"unknown keys in {section}: {', '.join(map(str, unknown))} (known: {', '.join(known)})",
        )


def _number(value: Any, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AnomalyError(where, f"{what}: expected a number, got {value!r}")
    return value


def _check_spec(name: str, spec: Any, where: str) -> dict:
    """Validate one distribution spec; return it normalised (or_zero as a probability)."""
    what = f"search.{name}"
    if not isinstance(spec, dict):
        raise AnomalyError(
            where, f"{what}: expected a mapping like {{loguniform: [1e-4, 1e-2]}}, got {spec!r}"
        )
    kinds = [key for key in spec if key in DISTRIBUTIONS]
    _check_keys(spec, [*DISTRIBUTIONS, "or_zero"], where, what)
    if len(kinds) != 1:
        raise AnomalyError(where, f"{what}: give exactly one of {', '.join(DISTRIBUTIONS)}")
    kind = kinds[0]
    args = spec[kind]
    if not isinstance(args, list) or not args:
        raise AnomalyError(where, f"{what}.{kind}: expected a non-empty list, got {args!r}")
    count = DISTRIBUTIONS[kind]
    if count is not None:
        if len(args) != count:
            raise AnomalyError(where, f"{what}.{kind}: expected {count} numbers, got {args!r}")
        for arg in args:
            _number(arg, where, f"{what}.{kind}")
        if kind in ("randint", "qrandint", "lograndint") and not all(isinstance(a, int) for a in args):
            raise AnomalyError(where, f"{what}.{kind}: expected integers, got {args!r}")
        low, high = args[0], args[1]
        if not low < high:
            raise AnomalyError(where, f"{what}.{kind}: the lower bound must be below the upper bound")
        if kind in ("loguniform", "qloguniform", "lograndint") and low <= 0:
            raise AnomalyError(
                where,
                f"{what}.{kind}: bounds must be positive (to include 0 add 'or_zero: true')",
            )
    normalised = {kind: list(args)}
    if "or_zero" in spec:
        if kind != "loguniform":
            raise AnomalyError(where, f"{what}: or_zero goes with loguniform only")
        p = spec["or_zero"]
        p = OR_ZERO_DEFAULT if p is True else p
        if p is False:
            return normalised
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
            raise AnomalyError(where, f"{what}.or_zero: expected true or a probability in (0, 1), got {p!r}")
        normalised["or_zero"] = float(p)
    return normalised


def _spec_values(spec: dict) -> list:
    """Values that bound the spec (its ends, or every option), to validate against TrainConfig."""
    kind = next(key for key in spec if key in DISTRIBUTIONS)
    args = spec[kind]
    values = list(args) if DISTRIBUTIONS[kind] is None else list(args[:2])
    if kind in ("randint", "lograndint"):
        values[1] -= 1  # upper bound excluded
    if spec.get("or_zero"):
        values.append(0.0)
    return values


def parse_search_spec(values: dict[str, Any], *, where: str = "search config") -> SearchSpec:
    """A search file's mapping -> :class:`SearchSpec`; every mistake is one :class:`AnomalyError`."""
    if not isinstance(values, dict):
        raise AnomalyError(where, "expected a mapping")
    sections = [key for key in values if key in SECTIONS]
    if not sections:  # a flat TrainConfig file: one trial of these settings
        return SearchSpec(TrainConfig.from_dict(values, where=where), {}, TuneSettings(), where)
    others = sorted(set(values) - set(SECTIONS))
    if others:
        raise AnomalyError(
            where,
            f"unknown top-level keys: {', '.join(map(str, others))} (a search file has only "
            f"{', '.join(SECTIONS)}; TrainConfig keys go under base:)",
        )
    for section in SECTIONS:
        if values.get(section) is not None and not isinstance(values[section], dict):
            raise AnomalyError(where, f"{section}: expected a mapping")
    base = TrainConfig.from_dict(values.get("base") or {}, where=f"{where}: base")
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    raw_search = values.get("search") or {}
    _check_keys(raw_search, known, where, "search")
    search: dict[str, dict] = {}
    for name, spec in raw_search.items():
        if name in NOT_SEARCHABLE:
            raise AnomalyError(
                where,
                f"search.{name}: cannot be searched (the validation split is prepared once from base)",
            )
        if name in (values.get("base") or {}):
            raise AnomalyError(where, f"{name}: both fixed in base and searched; keep one")
        search[name] = _check_spec(name, spec, where)
        for value in _spec_values(search[name]):
            try:
                base.replace(**{name: value})
            except AnomalyError as exc:
                raise AnomalyError(where, f"search.{name}: {value!r} is not allowed: {exc.what}") from exc
    tune = _parse_tune(values.get("tune") or {}, base, where)
    return SearchSpec(base, search, tune, where)


def _parse_tune(values: dict, base: TrainConfig, where: str) -> TuneSettings:
    known = [f.name for f in dataclasses.fields(TuneSettings)]
    _check_keys(values, known, where, "tune")
    settings = dict(values)
    asha = settings.pop("asha", {})
    if asha is False or asha is None:
        asha_settings = None
    elif isinstance(asha, dict):
        _check_keys(asha, [f.name for f in dataclasses.fields(AshaSettings)], where, "tune.asha")
        for key, value in asha.items():
            if value is not None:
                _number(value, where, f"tune.asha.{key}")
        asha_settings = AshaSettings(**asha)
        max_t = asha_settings.max_t or base.max_epochs
        if asha_settings.grace_period < 1 or max_t < asha_settings.grace_period:
            raise AnomalyError(where, "tune.asha: need 1 <= grace_period <= max_t")
        if max_t > base.max_epochs:
            raise AnomalyError(
                where, f"tune.asha.max_t: {max_t} is more than the base max_epochs ({base.max_epochs})"
            )
        if asha_settings.reduction_factor <= 1:
            raise AnomalyError(where, "tune.asha.reduction_factor: must be greater than 1")
    else:
        raise AnomalyError(where, f"tune.asha: expected a mapping or false, got {asha!r}")
    tune = TuneSettings(**settings, asha=asha_settings)
    if tune.metric not in METRICS:
        raise AnomalyError(where, f"tune.metric: must be one of {', '.join(METRICS)}")
    if tune.mode not in ("max", "min"):
        raise AnomalyError(where, "tune.mode: must be max or min")
    if not isinstance(tune.num_samples, int) or tune.num_samples < 1:
        raise AnomalyError(where, "tune.num_samples: must be a positive integer")
    if tune.max_concurrent is not None and (
        not isinstance(tune.max_concurrent, int) or tune.max_concurrent < 1
    ):
        raise AnomalyError(where, "tune.max_concurrent: must be a positive integer or null")
    if _number(tune.driver_cpus, where, "tune.driver_cpus") <= 0:
        raise AnomalyError(where, "tune.driver_cpus: must be positive")
    return tune


def load_search_spec(uri: str | None) -> SearchSpec:
    """Read a search file (or a flat TrainConfig file); ``None`` is one trial of the defaults."""
    if uri is None:
        return SearchSpec(TrainConfig(), {}, TuneSettings())
    return parse_search_spec(read_yaml(uri), where=uri)


# --- YAML specs -> ray.tune domains ----------------------------------------------------------


class OrZeroSampler:
    """Draw exactly 0 with probability ``p``, else from the wrapped sampler (log-uniform)."""

    def __init__(self, inner, p: float) -> None:
        self.inner = inner
        self.p = float(p)

    def sample(self, domain, config=None, size: int = 1, random_state=None):
        from ray.tune.search.sample import _BackwardsCompatibleNumpyRng

        if not isinstance(random_state, _BackwardsCompatibleNumpyRng):
            random_state = _BackwardsCompatibleNumpyRng(random_state)
        zero = random_state.uniform(0.0, 1.0, size=size) < self.p
        drawn = np.atleast_1d(self.inner.sample(domain, config=config, size=size, random_state=random_state))
        items = np.where(zero, 0.0, drawn)
        return items if len(items) > 1 else domain.cast(items[0])

    def __str__(self) -> str:
        return f"{self.inner} or 0 (p={self.p:g})"


def to_domain(name: str, spec: dict, *, where: str = "search config"):
    """One (validated) YAML spec -> the matching ``ray.tune`` search-space object."""
    from ray import tune

    spec = _check_spec(name, spec, where)
    kind = next(key for key in spec if key in DISTRIBUTIONS)
    args = spec[kind]
    if kind == "choice":
        return tune.choice(args)
    if kind == "grid":
        return tune.grid_search(args)
    domain = getattr(tune, kind)(*args)
    if "or_zero" in spec:
        domain.set_sampler(OrZeroSampler(domain.get_sampler(), spec["or_zero"]), allow_override=True)
    return domain


# --- the trials ------------------------------------------------------------------------------


STOP_TIMEOUT_S = float(os.environ.get("ANOMALY_TUNE_STOP_TIMEOUT_S", 60))


def _report_callback():
    """``TuneReportCallback`` that also reports ``epochs_done`` (ASHA's clock; survives Train resumes)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and "epoch" in metrics[0]:
                first = {**metrics[0], TIME_ATTR: int(metrics[0]["epoch"]) + 1}
                metrics = [first, *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return EpochReportCallback()


# Why the next two pieces exist: when ASHA stops a trial, Tune ends the trial's actor, which takes
# its Ray Train controller down with it, ungracefully. Train V2 then relies on a detached
# PlacementGroupCleaner that asks the State API (the dashboard) whether the controller is alive;
# without a dashboard (tests, `ray.init(include_dashboard=False)`) or with several Ray instances on
# one machine it cannot tell, so the stopped run's worker placement group stays reserved and the
# next trial's workers wait for CPUs that never come. So before the trial's actor exits, its
# cleanup asks the controller to abort (Train's own graceful abort, which releases the group).


def _stop_file(trial_id: str) -> str:
    """Node-local flag file of one trial; the Train controller runs on the trial's node."""
    return os.path.join(tempfile.gettempdir(), f"anomaly-tune-{os.getpid()}-{trial_id}.stop")


def _abort_on_stop_callback(stop_file: str):
    """A Train controller callback that aborts the run once ``stop_file`` exists (checked at every
    worker health poll, every 2 s). None where this Ray has no such hook (then nothing aborts)."""
    try:
        from ray.train.v2._internal.execution.callback import WorkerGroupCallback
    except ImportError:  # an internal module: a later Ray may move it
        logger.warning("this Ray version offers no worker-group callback; stopped trials may hold CPUs")
        return None

    class AbortOnStopFile(WorkerGroupCallback):
        def __init__(self, path: str) -> None:
            self.path = path
            self.sent = False

        def after_worker_group_poll_status(self, worker_group_status) -> None:
            if not self.sent and os.path.exists(self.path):
                self.sent = True
                logger.info("the trial was stopped by Tune; aborting its Ray Train run")
                ray.get_runtime_context().current_actor.abort.remote()

    return AbortOnStopFile(stop_file)


class AbortTrainOnTrialStop:
    """Mixed into the function trainable by Tune (``__mixins__``): abort Train, then clean up."""

    def cleanup(self) -> None:
        from ray.train._internal.session import get_session

        path = _stop_file(self.trial_id)
        session = get_session()
        thread = getattr(session, "training_thread", None) if session else None
        try:
            if thread is not None and thread.is_alive():
                with open(path, "w"):
                    pass
                thread.join(timeout=STOP_TIMEOUT_S)
                if thread.is_alive():
                    logger.warning("trial %s: its Ray Train run did not stop in time", self.trial_id)
            super().cleanup()
        except Exception as exc:  # the aborted run's error: expected when Tune stops a trial
            logger.debug("trial %s stopped: %s", self.trial_id, exc)
        finally:
            if os.path.exists(path):
                os.remove(path)


@dataclass(frozen=True)
class TrialInputs:
    """What every trial needs besides its config; ``data`` is an ObjectRef to the shared arrays."""

    store: str
    out: str
    data: Any
    num_workers: int
    use_gpu: bool
    cpus_per_worker: float
    max_failures: int
    # The driver's RAY_TRAIN_* settings: Train forwards them from its driver (here, the trial) to
    # its controller and workers, but a trial's process does not inherit the Tune driver's env.
    train_env: dict = field(default_factory=dict)


def run_trial(config: dict, inputs: TrialInputs) -> None:
    """Tune's function trainable: one Ray Train run with this trial's settings.

    It trains into ``OUT/trials/TRIAL_ID`` (a full RUN_DIR when the trial runs to its end;
    a re-started trial resumes from its last Train checkpoint there).
    """
    from ray import tune

    from anomaly.training import fit

    trial_id = tune.get_context().get_trial_id()
    os.environ.update(inputs.train_env)
    train_config = TrainConfig.from_dict(config, where=f"trial {trial_id}")
    fit(
        inputs.store,
        uris.join(inputs.out, "trials", trial_id),
        train_config,
        num_workers=inputs.num_workers,
        use_gpu=inputs.use_gpu,
        cpus_per_worker=inputs.cpus_per_worker,
        max_failures=inputs.max_failures,
        data=inputs.data,
        callbacks=[
            callback
            for callback in (_report_callback(), _abort_on_stop_callback(_stop_file(trial_id)))
            if callback is not None
        ],
        name="train",
    )


run_trial.__mixins__ = (AbortTrainOnTrialStop,)  # Tune mixes these into the trainable it builds


def default_max_concurrent(
    driver_cpus: float, num_workers: int, cpus_per_worker: float, use_gpu: bool
) -> int:
    """Trials that fit in the cluster now: each takes a driver plus its Train workers."""
    resources = ray.cluster_resources()
    per_trial = driver_cpus + num_workers * cpus_per_worker
    fits = int(resources.get("CPU", 0) // per_trial) if per_trial > 0 else 1
    if use_gpu:
        fits = min(fits, int(resources.get("GPU", 0) // max(num_workers, 1)))
    return max(1, fits)


# --- results ---------------------------------------------------------------------------------


class SearchInterrupted(Exception):
    """The search stopped before every trial ended; ``--resume`` continues it."""


@dataclass
class SearchResult:
    out: str
    rows: list[dict]  # one per trial, best first
    columns: list[str]
    best: dict | None
    best_config: TrainConfig | None
    eval_metrics: dict | None
    experiment_path: str
    sweep_plot: str | None = None  # None when nothing was searched


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _trial_id(result) -> str:
    trial_id = (result.metrics or {}).get("trial_id")
    if trial_id:
        return str(trial_id)
    # A trial that failed before its first report: Tune names its folder TRAINABLE_TRIALID_INDEX_…
    name = os.path.basename(str(result.path).rstrip("/"))
    match = re.search(r"_([0-9a-f]{5}_\d{5})_", name)
    return match.group(1) if match else name


def _stopped_by(history: list[dict], spec: SearchSpec, config: TrainConfig, error) -> str:
    if error is not None:
        return "error"
    epochs = len(history)
    if epochs >= config.max_epochs:
        return "max_epochs"
    if spec.tune.asha and epochs >= spec.max_t:
        return "max_t"
    if history:
        best = history[-1].get("best_val_auc")
        first_best = next(i for i, row in enumerate(history) if row.get("best_val_auc") == best)
        if epochs - 1 - first_best >= config.patience:
            return "early_stopping"
    return "asha" if spec.tune.asha else "stopped"


def summarise(result_grid, spec: SearchSpec) -> tuple[list[dict], list[str], dict[str, list[dict]]]:
    """Rows of the results table (best first), its columns, and each trial's history."""
    metric, mode = spec.tune.metric, spec.tune.mode
    rows, histories = [], {}
    for result in result_grid:
        frame = result.metrics_dataframe
        history = frame.to_dict("records") if frame is not None and len(frame) else []
        history = sorted(
            (row for row in history if _is_finite(row.get("epoch"))), key=lambda row: row["epoch"]
        )
        # A trial restarted after a crash reports its resumed epochs again: keep the last of each.
        history = list({int(row["epoch"]): row for row in history}.values())
        trial_id = _trial_id(result)
        histories[trial_id] = history
        config = TrainConfig.from_dict(
            {k: v for k, v in (result.config or {}).items() if k in spec.base.to_dict()},
            where=f"trial {trial_id}",
        )
        values = [row[metric] for row in history if _is_finite(row.get(metric))]
        best_value = (max if mode == "max" else min)(values) if values else math.nan
        best_row = next((row for row in history if row.get(metric) == best_value), None)
        aucs = [row["val_auc"] for row in history if _is_finite(row.get("val_auc"))]
        row = {"trial_id": trial_id}
        row.update({name: getattr(config, name) for name in spec.searched})
        row["best_val_auc"] = max(aucs) if aucs else math.nan
        if metric != "val_auc":
            row[f"best_{metric}"] = best_value
        row["best_epoch"] = int(best_row["epoch"]) if best_row else -1
        row["epochs"] = len(history)
        row["status"] = "ERROR" if result.error is not None else "TERMINATED"
        row["stopped_by"] = _stopped_by(history, spec, config, result.error)
        row["_config"] = config
        row["_error"] = result.error
        rows.append(row)
    key = "best_val_auc" if metric == "val_auc" else f"best_{metric}"
    sign = -1 if mode == "max" else 1
    rows.sort(
        key=lambda r: (not _is_finite(r[key]), sign * r[key] if _is_finite(r[key]) else 0, r["trial_id"])
    )
    columns = [c for c in rows[0] if not c.startswith("_")] if rows else ["trial_id"]
    return rows, columns, histories


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if (value == 0 or 1e-3 <= abs(value) < 1e4) else f"{value:.3e}"
    return str(value)


def format_table(rows: list[dict], columns: list[str]) -> str:
    cells = [columns] + [[_format(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in cells)


def write_table(uri: str, rows: list[dict], columns: list[str]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    uris.write_bytes_atomic(uri, text.getvalue().encode())


def _best_checkpoint(history: list[dict], metric: str, mode: str, out: str):
    """The kept Train checkpoint of the trial's best epoch (latest of ties: Train keeps the newest)."""
    from ray.train import Checkpoint

    filesystem = None if uris.is_local(out) else uris.pyarrow_filesystem(out)[0]
    candidates = [row for row in history if _is_finite(row.get(metric)) and row.get("checkpoint_path")]
    sign = 1 if mode == "max" else -1
    candidates.sort(key=lambda row: (sign * row[metric], row["epoch"]), reverse=True)
    for row in candidates:
        path = row["checkpoint_path"]
        exists = os.path.isdir(path) if filesystem is None else uris.exists(f"{out.split('://')[0]}://{path}")
        if exists:
            return Checkpoint(path, filesystem=filesystem), row
    return None, None


# --- the driver ------------------------------------------------------------------------------


def _comparable(spec: SearchSpec) -> dict:
    """What must not change between a search and its resumption (the trial count is fixed by then)."""
    values = spec.to_dict()
    flexible = ("num_samples", "max_concurrent", "driver_cpus")
    values["tune"] = {k: v for k, v in values["tune"].items() if k not in flexible}
    return values


def run_search(
    store: str,
    out: str,
    spec: SearchSpec | None,
    *,
    num_workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 0,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    resume: bool = False,
    evaluate_best: bool = True,
) -> SearchResult:
    """Run (or resume) the search and write the table, best config, best model, its evaluation, plot.

    ``spec`` None: one trial of the defaults, or on ``resume`` the settings the search started with.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from anomaly.training import prepare_data

    if uris.is_local(out):
        out = os.path.abspath(out)
    storage = uris.join(out, "ray_results")
    filesystem = None
    if not uris.is_local(out):
        filesystem, storage = uris.pyarrow_filesystem(storage)
    experiment = uris.join(out, "ray_results", EXPERIMENT)
    experiment_path = experiment if filesystem is None else uris.pyarrow_filesystem(experiment)[1]
    saved_spec = uris.join(out, "search.yaml")
    started = tune.Tuner.can_restore(experiment_path, storage_filesystem=filesystem)
    if resume:
        if not started:
            raise AnomalyError(out, "no search to resume here (run without --resume to start one)")
        previous = parse_search_spec(read_yaml(saved_spec), where=saved_spec)
        if spec is not None and _comparable(previous) != _comparable(spec):
            raise AnomalyError(
                spec.source, f"differs from the settings the search in {out} started with ({saved_spec})"
            )
        spec = previous
    elif started:
        raise AnomalyError(out, "already holds a search; pass --resume to continue it or use a new --out")
    spec = spec or load_search_spec(None)
    tune_settings = spec.tune
    if num_samples is not None:
        tune_settings = dataclasses.replace(tune_settings, num_samples=num_samples)
    if max_concurrent is not None:
        tune_settings = dataclasses.replace(tune_settings, max_concurrent=max_concurrent)
    spec = dataclasses.replace(spec, tune=tune_settings)
    if not resume:
        write_yaml(saved_spec, spec.to_dict())

    data = prepare_data(store, spec.base)  # read once; every trial's workers share these arrays
    inputs = TrialInputs(
        store=store,
        out=out,
        data=ray.put(data),
        num_workers=num_workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        max_failures=max_failures,
        train_env={k: v for k, v in os.environ.items() if k.startswith("RAY_TRAIN_")},
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, inputs=inputs), {"CPU": tune_settings.driver_cpus}
    )
    fits = default_max_concurrent(tune_settings.driver_cpus, num_workers, cpus_per_worker, use_gpu)
    concurrent = tune_settings.max_concurrent or fits
    if concurrent > fits:
        logger.warning(
            "%d trials at a time, but the cluster holds %d now (each: a driver of %g CPU and %d workers "
            "of %g CPU%s); the others' workers wait for resources (or for the autoscaler)",
            concurrent,
            fits,
            tune_settings.driver_cpus,
            num_workers,
            cpus_per_worker,
            " and 1 GPU" if use_gpu else "",
        )
    if resume:
        logger.info("resuming the search in %s", experiment)
        tuner = tune.Tuner.restore(
            experiment_path, trainable=trainable, resume_errored=True, storage_filesystem=filesystem
        )
    else:
        scheduler = None
        if tune_settings.asha:
            scheduler = ASHAScheduler(
                time_attr=TIME_ATTR,
                max_t=spec.max_t,
                grace_period=tune_settings.asha.grace_period,
                reduction_factor=tune_settings.asha.reduction_factor,
            )
        logger.info(
            "searching %s with %d samples, %d at a time",
            spec.searched or "nothing",
            tune_settings.num_samples,
            concurrent,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=spec.param_space(),
            tune_config=tune.TuneConfig(
                metric=tune_settings.metric,
                mode=tune_settings.mode,
                scheduler=scheduler,
                # The generator limits concurrency itself (max_concurrent_trials is ignored with it).
                search_alg=BasicVariantGenerator(random_state=tune_settings.seed, max_concurrent=concurrent),
                num_samples=tune_settings.num_samples,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=storage,
                storage_filesystem=filesystem,
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=1,
            ),
        )
    result_grid = tuner.fit()
    unfinished = len(result_grid) - result_grid.num_terminated - result_grid.num_errors
    if unfinished:  # Tune returns after Ctrl+C (or SIGTERM) with its state saved
        raise SearchInterrupted(f"{unfinished} of {len(result_grid)} trials have not ended")
    return write_results(store, out, spec, result_grid, experiment, evaluate_best=evaluate_best)


def write_results(
    store: str, out: str, spec: SearchSpec, result_grid, experiment: str, *, evaluate_best: bool = True
) -> SearchResult:
    """trials.csv, best_config.yaml, best_run/ (model.pt, config, history), best_eval/, sweep.png."""
    from anomaly.training import export_model, write_history

    rows, columns, histories = summarise(result_grid, spec)
    write_table(uris.join(out, "trials.csv"), rows, columns)
    metric, mode = spec.tune.metric, spec.tune.mode
    key = "best_val_auc" if metric == "val_auc" else f"best_{metric}"
    ranked = [row for row in rows if _is_finite(row[key])]
    if not ranked:
        errors = [str(row["_error"]).strip().splitlines()[-1] for row in rows if row["_error"] is not None]
        raise AnomalyError(
            out, "no trial reported a metric" + (f"; first error: {errors[0]}" if errors else "")
        )
    sweep_uri = None
    if spec.searched:
        from anomaly.plots import sweep_plot

        values = {name: [row[name] for row in ranked] for name in spec.searched}
        sweep_uri = sweep_plot(
            values, [row[key] for row in ranked], uris.join(out, "sweep.png"), metric_name=metric
        )
    best_checkpoint = None
    for best in ranked:  # the best trial whose best checkpoint is still there
        best_checkpoint, best_epoch = _best_checkpoint(histories[best["trial_id"]], metric, mode, out)
        if best_checkpoint is not None:
            break
    if best_checkpoint is None:
        raise AnomalyError(out, "no trial left a checkpoint of its best epoch")
    best_config: TrainConfig = best["_config"]
    write_yaml(uris.join(out, "best_config.yaml"), best_config.to_dict())
    best_run = uris.join(out, "best_run")
    export_model(best_checkpoint, best_run)
    write_yaml(uris.join(best_run, "config.yaml"), best_config.to_dict())
    history = [
        {k: v for k, v in row.items() if not str(k).startswith("_")} for row in histories[best["trial_id"]]
    ]
    write_history(best_run, history)
    eval_metrics = None
    if evaluate_best:
        from anomaly.evaluation import evaluate

        eval_metrics = evaluate(store, best_run, uris.join(out, "best_eval"))
    return SearchResult(
        out=out,
        rows=rows,
        columns=columns,
        best={
            **{k: v for k, v in best.items() if not k.startswith("_")},
            "checkpoint_epoch": int(best_epoch["epoch"]),
        },
        best_config=best_config,
        eval_metrics=eval_metrics,
        experiment_path=experiment,
        sweep_plot=sweep_uri,
    )


def describe_spec(spec: SearchSpec) -> str:
    """A few lines for the log: what is searched and how."""
    lines = [
        f"{name}: {yaml.safe_dump(s, default_flow_style=True).strip()}" for name, s in spec.search.items()
    ]
    return "\n".join(lines) if lines else "(no search space: one trial of the base settings)"
