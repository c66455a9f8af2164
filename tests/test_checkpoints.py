"""anomaly.checkpoints: torch-only model files, so scoring and evaluation need no Ray Train."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from anomaly.checkpoints import checkpoint_payload, load_scorer, score_bags, stored_metadata
from anomaly.config import TrainConfig
from anomaly.errors import AnomalyError
from anomaly.heads import MILScorer
from anomaly.store import StoreMetadata


@pytest.mark.slow
def test_inference_modules_do_not_import_ray_train():
    """A fresh interpreter: importing scoring and evaluation loads torch but not ray.train."""
    code = (
        "import sys, anomaly.scoring, anomaly.evaluation, anomaly.checkpoints\n"
        "print(sorted(m for m in sys.modules if m == 'ray.train' or m.startswith('ray.train.')))\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "True"], out


def test_payload_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MILScorer(8)
    meta = StoreMetadata(backbone="r3d_18", feature_dim=8, clip_len=4, stride=4, crop=(32, 32))
    torch.save(
        checkpoint_payload(model, TrainConfig(lr=0.01), epoch=3, store_metadata=meta.to_dict()),
        tmp_path / "model.pt",
    )
    loaded, payload = load_scorer(str(tmp_path))  # a run directory means RUN_DIR/model.pt
    assert payload["epoch"] == 3 and payload["config"]["lr"] == 0.01 and payload["feature_dim"] == 8
    assert stored_metadata(payload) == meta
    features = np.random.default_rng(0).standard_normal((3, 32, 8)).astype(np.float32)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(features)).numpy()
    np.testing.assert_allclose(score_bags(loaded, features, batch=2), expected, rtol=1e-6)
    assert score_bags(loaded, features[:0]).shape == (0, 32)


def test_foreign_file_is_one_line(tmp_path):
    target = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(4, 3).state_dict(), target)
    with pytest.raises(AnomalyError, match=r"linear\.pt: not a checkpoint of this project: ") as err:
        load_scorer(str(target))
    assert "\n" not in str(err.value)
    with pytest.raises(AnomalyError, match="no trained model found"):
        load_scorer(str(tmp_path / "missing"))
