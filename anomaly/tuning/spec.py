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
      # or, to rank trials by k-fold cross-validation on the train split's video labels instead
      # of one validation split (each trial trains k models; ASHA off; best_run is refitted):
      # cv_folds: 3

Distributions map one to one onto ``ray.tune``: ``uniform: [lo, hi]``, ``quniform: [lo, hi, q]``,
``loguniform: [lo, hi]``, ``qloguniform: [lo, hi, q]``, ``randint: [lo, hi]`` (hi excluded),
``qrandint: [lo, hi, q]`` (hi included), ``lograndint: [lo, hi]`` (hi excluded), ``choice: [a, b, …]``
and ``grid: [a, b, …]`` (every value in every sample). ``or_zero: true`` (or a probability in
(0, 1)) next to ``loguniform`` draws exactly 0 with that probability (true = 0.25): log-uniform
weights "including 0", for terms the search may switch off.

A flat file of TrainConfig keys (``tune_configs/default.yaml``, what ``ray_jobs.train --config``
takes) is a search without a ``search:`` section: a single trial of those settings.

(:mod:`anomaly.tuning.domains` maps the distributions onto ``ray.tune``.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from anomaly.config import TrainConfig, read_yaml
from anomaly.errors import AnomalyError

SECTIONS = ("base", "search", "tune")
METRICS = ("val_auc", "val_frame_auc", "val_video_auc", "loss", "cv_auc")
CV_METRIC = "cv_auc"  # a cross-validated trial's figure: the mean over folds of the held-out fold's bag AUC
# The validation split and normalisation statistics are prepared once from the base config and
# shared by every trial, so a trial may not change what they depend on (a searched feature_norm
# would feed inputs normalised with another rule's statistics: |z| ~ 138 on raw ResNet3D rows;
# a searched crops would change the bags themselves).
NOT_SEARCHABLE = ("seed", "val_fraction", "feature_norm", "crops")
# Tune ranks trials on a validation split carved from train; training's own default holds none back
# (val_fraction 0: EMA/last selection never reads it), so a search that does not set it uses this.
TUNE_VAL_FRACTION = 0.15
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
    # k >= 2: each trial trains k models, each with one stratified fold of the train split held
    # out, and is ranked by the mean video (bag) AUC on the held-out folds (metric cv_auc); the
    # best settings are then trained on every training video into best_run. No test labels.
    cv_folds: int | None = None


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


def check_spec(name: str, spec: Any, where: str) -> dict:
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
        flat = {"val_fraction": TUNE_VAL_FRACTION, **values}
        return SearchSpec(TrainConfig.from_dict(flat, where=where), {}, TuneSettings(), where)
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
    base = TrainConfig.from_dict(
        {"val_fraction": TUNE_VAL_FRACTION, **(values.get("base") or {})}, where=f"{where}: base"
    )
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    raw_search = values.get("search") or {}
    _check_keys(raw_search, known, where, "search")
    search: dict[str, dict] = {}
    for name, spec in raw_search.items():
        if name in NOT_SEARCHABLE:
            raise AnomalyError(
                where,
                f"search.{name}: cannot be searched (the validation split and normalisation statistics "
                "are prepared once from base: run one search per value)",
            )
        if name in (values.get("base") or {}):
            raise AnomalyError(where, f"{name}: both fixed in base and searched; keep one")
        search[name] = check_spec(name, spec, where)
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
    folds = settings.get("cv_folds")
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise AnomalyError(where, f"tune.cv_folds: must be an integer >= 2 or null, got {folds!r}")
    if folds is not None:
        if settings.get("asha"):
            raise AnomalyError(
                where,
                "tune.asha: a cross-validated trial reports once, at its end; set asha: false with cv_folds",
            )
        settings["asha"] = False
        if (
            settings.setdefault("metric", CV_METRIC) != CV_METRIC
            or settings.setdefault("mode", "max") != "max"
        ):
            raise AnomalyError(where, f"tune.metric: cv_folds ranks trials by {CV_METRIC} (max)")
    elif settings.get("metric") == CV_METRIC:
        raise AnomalyError(where, f"tune.metric: {CV_METRIC} needs tune.cv_folds")
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


def describe_spec(spec: SearchSpec) -> str:
    """A few lines for the log: what is searched and how."""
    lines = [
        f"{name}: {yaml.safe_dump(s, default_flow_style=True).strip()}" for name, s in spec.search.items()
    ]
    return "\n".join(lines) if lines else "(no search space: one trial of the base settings)"
