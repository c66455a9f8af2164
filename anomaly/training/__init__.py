"""MIL training on Ray Train: balanced bags from Ray Data, DDP, per-epoch validation, checkpoints.

- :mod:`.data`: the store through Ray Data (split ids, distributed statistics, shards, bag streams);
- :mod:`.loop`: what every worker runs (balanced steps, sharded validation, reports);
- :mod:`.checkpoints`: checkpoint folders, resuming, ``model.pt``, ``history.csv`` (the payload
  itself and loading a model: :mod:`anomaly.checkpoints`);
- :mod:`.driver`: :func:`fit`, the Ray Train run and its outputs.

The driver never loads the features: its memory stays flat however large the store.
"""

from anomaly.training.checkpoints import (
    export_model,
    latest_stored_checkpoint,
    load_checkpoint_payload,
    write_history,
)
from anomaly.training.data import TrainingInputs, prepare_folds, prepare_inputs, stratified_split
from anomaly.training.driver import TrainResult, fit, run_config
from anomaly.training.loop import build_model, make_optimizer, train_loop_per_worker

__all__ = [
    "TrainResult",
    "TrainingInputs",
    "build_model",
    "export_model",
    "fit",
    "latest_stored_checkpoint",
    "load_checkpoint_payload",
    "make_optimizer",
    "prepare_folds",
    "prepare_inputs",
    "run_config",
    "stratified_split",
    "train_loop_per_worker",
    "write_history",
]
