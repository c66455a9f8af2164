"""Typed training configuration from YAML; unknown keys are an error, not a silent default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import yaml

from anomaly import uris
from anomaly.errors import AnomalyError

# The names each choice accepts. Heads and losses are registries (anomaly.heads.HEADS,
# anomaly.losses.LOSSES): a new one registered there is accepted here without an edit.
NORMS = ("robust", "standardize", "l2", "none")  # anomaly.normalization
SELECTIONS = ("ema", "last", "best_val")  # anomaly.selection


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are the principled choices explained in the README (and ``tune_configs/default.yaml``)."""

    # Head (anomaly.heads.HEADS): "mlp" (Sultani's reference), "rtfm" (multi-scale temporal network),
    # "transformer", "bnwvad" (BN-WVAD's enhancer + BatchNorm normal head), ...
    model: str = "mlp"
    # Heads trained side by side from different initialisations; their scores are averaged.
    ensemble: int = 1
    # Loss (anomaly.losses.LOSSES): sultani | topk | topk_bce | rtfm | false_alarm | bnwvad | ...
    loss: str = "topk_bce"
    topk: int = 3
    lambda_smooth: float = 8e-5  # Sultani's λ1
    lambda_sparse: float = 8e-5  # Sultani's λ2
    lambda_false_alarm: float = 0.1  # weight of the all-normal-segments term (loss false_alarm)
    lambda_magnitude: float = 1e-4  # RTFM's α on the feature-magnitude loss (loss rtfm)
    # Optimisation.
    optimizer: str = "adam"  # "adam" | "adagrad" (Sultani used Adagrad)
    lr: float = 1e-3
    weight_decay: float = 1e-3  # Sultani's L2 of 0.001 on the weights
    batch_size: int = 30  # bags of EACH label per step (Sultani: 30 + 30)
    max_epochs: int = 30
    patience: int = 10  # epochs without validation improvement before stopping early (best_val only)
    # Which weights the run exports (anomaly.selection): "ema" (exponential average of the weights over
    # the fixed budget), "last", or "best_val" (best validation epoch, with early stopping).
    selection: str = "ema"
    ema_decay: float = 0.99
    # Model and data.
    dropout: float = 0.6
    feature_norm: str = "robust"  # robust | standardize | l2 | none (anomaly.normalization)
    # Carved from train, stratified by label; 0 trains on every video (ema/last never read it).
    val_fraction: float = 0.0
    # Ten-crop stores (anomaly.crops): "bags" = each crop its own training bag, crop scores averaged
    # at validation and evaluation (RTFM); "mean" = train and score the crops' mean. No effect on one crop.
    crops: str = "bags"
    seed: int = 0  # validation split, initialisation, batch order: one seed, one model

    def __post_init__(self) -> None:
        from anomaly.heads import HEADS
        from anomaly.losses import LOSSES, NEEDS_HEAD

        checks = [
            (self.loss in LOSSES, "loss", f"must be one of {', '.join(LOSSES)}"),
            (self.model in HEADS, "model", f"must be one of {', '.join(HEADS)}"),
            (
                NEEDS_HEAD.get(self.loss, self.model) == self.model,
                "model",
                f"must be {NEEDS_HEAD.get(self.loss)} with loss {self.loss} (it reads that head's features)",
            ),
            (1 <= self.ensemble <= 64, "ensemble", "must be between 1 and 64"),
            (self.optimizer in ("adam", "adagrad"), "optimizer", "must be adam or adagrad"),
            (self.feature_norm in NORMS, "feature_norm", f"must be one of {', '.join(NORMS)}"),
            (self.selection in SELECTIONS, "selection", f"must be one of {', '.join(SELECTIONS)}"),
            (0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)"),
            (1 <= int(self.topk) <= 32, "topk", "must be between 1 and 32"),
            (self.lr > 0, "lr", "must be positive"),
            (0 <= self.dropout < 1, "dropout", "must be in [0, 1)"),
            (self.batch_size >= 1, "batch_size", "must be at least 1"),
            (self.max_epochs >= 1, "max_epochs", "must be at least 1"),
            (self.patience >= 1, "patience", "must be at least 1"),
            (0 <= self.val_fraction < 1, "val_fraction", "must be in [0, 1)"),
            (
                self.val_fraction > 0 or self.selection != "best_val",
                "val_fraction",
                "must be above 0 with selection best_val (it selects on the validation split)",
            ),
            (self.crops in ("bags", "mean"), "crops", "must be bags or mean"),
            (
                min(
                    self.lambda_smooth,
                    self.lambda_sparse,
                    self.lambda_false_alarm,
                    self.lambda_magnitude,
                    self.weight_decay,
                )
                >= 0,
                "lambda_*/weight_decay",
                "must not be negative",
            ),
        ]
        for ok, key, why in checks:
            if not ok:
                raise AnomalyError(f"config key '{key}'", why)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "config") -> TrainConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise AnomalyError(
                where, f"unknown config keys: {', '.join(unknown)} (known: {', '.join(known)})"
            )
        typed = {}
        for key, value in values.items():
            kind = type(known[key].default)
            try:
                typed[key] = kind(value) if kind in (int, float) else value
            except (TypeError, ValueError) as exc:
                raise AnomalyError(
                    where, f"config key '{key}': expected {kind.__name__}, got {value!r}"
                ) from exc
        return cls(**typed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def read_yaml(uri: str) -> dict[str, Any]:
    try:
        values = yaml.safe_load(uris.read_bytes(uri)) or {}
    except yaml.YAMLError as exc:
        raise AnomalyError(uri, f"not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(values, dict):
        raise AnomalyError(uri, "expected a mapping of config keys")
    return values


def load_train_config(uri: str | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file's keys, then explicit overrides."""
    values = read_yaml(uri) if uri else {}
    values.update(overrides or {})
    return TrainConfig.from_dict(values, where=uri or "config")


def write_yaml(uri: str, values: dict[str, Any]) -> None:
    uris.write_bytes_atomic(uri, yaml.safe_dump(values, sort_keys=False).encode())
