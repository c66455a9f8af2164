"""The results of a search: the trials table (best first), the best trial's model, config and evaluation."""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anomaly import uris
from anomaly.config import TrainConfig, write_yaml
from anomaly.errors import AnomalyError
from anomaly.selection import selects_by_validation
from anomaly.tuning.spec import SearchSpec


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
    if history and "folds" in history[-1]:  # cross-validated: one report after every fold's budget
        return "cross_validation"
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
        # A trial is ranked by the epoch it exports: its best validation epoch under selection
        # best_val, else its last epoch (the EMA/last weights of its fixed budget), so the model
        # written for the best trial is the one that was ranked.
        exported = history if selects_by_validation(config.selection) else history[-1:]
        values = [row[metric] for row in exported if _is_finite(row.get(metric))]
        best_value = (max if mode == "max" else min)(values) if values else math.nan
        best_row = next((row for row in exported if row.get(metric) == best_value), None)
        aucs = [row["val_auc"] for row in exported if _is_finite(row.get("val_auc"))]
        row = {"trial_id": trial_id}
        row.update({name: getattr(config, name) for name in spec.searched})
        row["best_val_auc"] = max(aucs) if aucs else math.nan
        if metric != "val_auc":
            row[f"best_{metric}"] = best_value
        if best_row and "cv_auc_std" in best_row:
            row["cv_auc_std"] = best_row["cv_auc_std"]
        row["best_epoch"] = int(best_row["epoch"]) if best_row else -1
        row["epochs"] = config.max_epochs if history and "folds" in history[-1] else len(history)
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

    _, filesystem = uris.ray_storage(out)
    candidates = [row for row in history if _is_finite(row.get(metric)) and row.get("checkpoint_path")]
    sign = 1 if mode == "max" else -1
    candidates.sort(key=lambda row: (sign * row[metric], row["epoch"]), reverse=True)
    for row in candidates:
        path = row["checkpoint_path"]
        exists = os.path.isdir(path) if filesystem is None else uris.exists(f"{out.split('://')[0]}://{path}")
        if exists:
            return Checkpoint(path, filesystem=filesystem), row
    return None, None


def write_results(
    store: str,
    out: str,
    spec: SearchSpec,
    result_grid,
    experiment: str,
    *,
    evaluate_best: bool = True,
    refit: Callable[[TrainConfig, str], None] | None = None,
) -> SearchResult:
    """trials.csv, best_config.yaml, best_run/ (model.pt, config, history), best_eval/, sweep.png.

    ``refit`` (cross-validated searches): ``best_run`` is the best settings trained anew on every
    training video (``val_fraction`` 0), since each trial's models each left a fold out.
    """
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
    best_run = uris.join(out, "best_run")
    if refit is not None:  # cross-validated: the winner trained anew on every training video
        best = ranked[0]
        best_config: TrainConfig = best["_config"].replace(val_fraction=0.0)
        write_yaml(uris.join(out, "best_config.yaml"), best_config.to_dict())
        refit(best_config, best_run)
        best_epoch = best_config.max_epochs - 1
    else:
        best, best_config, best_epoch = _export_best(ranked, histories, metric, mode, out, best_run)
    eval_metrics = None
    if evaluate_best:
        from anomaly.evaluation import evaluate

        eval_metrics = evaluate(store, best_run, uris.join(out, "best_eval"))
    return SearchResult(
        out=out,
        rows=rows,
        columns=columns,
        best={**{k: v for k, v in best.items() if not k.startswith("_")}, "checkpoint_epoch": best_epoch},
        best_config=best_config,
        eval_metrics=eval_metrics,
        experiment_path=experiment,
        sweep_plot=sweep_uri,
    )


def _export_best(
    ranked: list[dict], histories: dict, metric: str, mode: str, out: str, best_run: str
) -> tuple[dict, TrainConfig, int]:
    """best_config.yaml and best_run/ from the best trial's kept checkpoint of the epoch it was ranked by."""
    from anomaly.training import export_model, write_history

    best_checkpoint = None
    for best in ranked:  # the best trial whose best checkpoint is still there
        history = histories[best["trial_id"]]
        if not selects_by_validation(best["_config"].selection):
            history = history[-1:]  # the epoch it was ranked by (summarise)
        best_checkpoint, best_epoch = _best_checkpoint(history, metric, mode, out)
        if best_checkpoint is not None:
            break
    if best_checkpoint is None:
        raise AnomalyError(out, "no trial left a checkpoint of its best epoch")
    best_config: TrainConfig = best["_config"]
    write_yaml(uris.join(out, "best_config.yaml"), best_config.to_dict())
    export_model(best_checkpoint, best_run)
    write_yaml(uris.join(best_run, "config.yaml"), best_config.to_dict())
    history = [
        {k: v for k, v in row.items() if not str(k).startswith("_")} for row in histories[best["trial_id"]]
    ]
    write_history(best_run, history)
    return best, best_config, int(best_epoch["epoch"])
