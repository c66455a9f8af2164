"""Typed training configuration from YAML; unknown keys are an error, not a silent default."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import yaml

from anomaly import uris
from anomaly.errors import AnomalyError

LOSSES = ("sultani", "topk", "false_alarm")


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are the principled choices explained in the README (and ``tune_configs/default.yaml``)."""

    # Loss: "sultani" (max), "topk" (mean of the k highest scores), "false_alarm" (sultani + normal-max term).
    loss: str = "sultani"
    topk: int = 3
    lambda_smooth: float = 8e-5  # Sultani's λ1
    lambda_sparse: float = 8e-5  # Sultani's λ2
    lambda_false_alarm: float = 0.1
    # Optimisation.
    optimizer: str = "adam"  # "adam" | "adagrad" (Sultani used Adagrad)
    lr: float = 1e-3
    weight_decay: float = 1e-3  # Sultani's L2 of 0.001 on the weights
    batch_size: int = 30  # bags of EACH label per step (Sultani: 30 + 30)
    max_epochs: int = 100
    patience: int = 10  # epochs without validation improvement before stopping early
    # Model and data.
    dropout: float = 0.6
    feature_norm: str = "standardize"  # "standardize" (train mean/std) | "l2" | "none"
    val_fraction: float = 0.15  # carved from train, stratified by label
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.loss in LOSSES, "loss", f"must be one of {', '.join(LOSSES)}"),
            (self.optimizer in ("adam", "adagrad"), "optimizer", "must be adam or adagrad"),
            (
                self.feature_norm in ("standardize", "l2", "none"),
                "feature_norm",
                "must be standardize, l2 or none",
            ),
            (1 <= int(self.topk) <= 32, "topk", "must be between 1 and 32"),
            (self.lr > 0, "lr", "must be positive"),
            (0 <= self.dropout < 1, "dropout", "must be in [0, 1)"),
            (self.batch_size >= 1, "batch_size", "must be at least 1"),
            (self.max_epochs >= 1, "max_epochs", "must be at least 1"),
            (self.patience >= 1, "patience", "must be at least 1"),
            (0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)"),
            (
                min(self.lambda_smooth, self.lambda_sparse, self.lambda_false_alarm, self.weight_decay) >= 0,
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
