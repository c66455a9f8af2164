"""Evaluation scores a split with its features streamed in record batches, not loaded at once."""

import numpy as np
import pyarrow.parquet as pq
import torch

from anomaly import evaluation
from anomaly import store as feature_store
from anomaly.checkpoints import checkpoint_payload, load_scorer, score_bags
from anomaly.config import TrainConfig
from anomaly.heads import MILScorer
from anomaly.synthetic.features import make_feature_store, synthetic_rows


def test_streamed_scores_equal_scoring_the_whole_split(tmp_path, monkeypatch):
    store = make_feature_store(
        str(tmp_path / "store"), num_train=4, num_test=23, feature_dim=8, seed=2, rows_per_part=5
    )
    rows = [
        r for r in synthetic_rows(num_train=0, num_test=23, feature_dim=8, seed=2) if r["split"] == "test"
    ]
    feature_store.write_rows(store, [{**rows[0], "features": rows[0]["features"] + 5.0}])  # a later duplicate
    torch.manual_seed(0)
    model = MILScorer(8)
    torch.save(checkpoint_payload(model, TrainConfig(), epoch=0, metrics={}), tmp_path / "model.pt")
    monkeypatch.setattr(evaluation, "SCORE_BATCH_ROWS", 4)  # several batches, split across part files
    evaluation.evaluate(store, str(tmp_path / "model.pt"), str(tmp_path / "eval"), timelines=False)
    written = pq.read_table(tmp_path / "eval" / "scores.parquet").to_pydict()
    bags = feature_store.load_bags(store, split="test")  # the first row of each video, all in memory
    expected = score_bags(load_scorer(str(tmp_path / "model.pt"))[0], bags.features)
    assert written["video_id"] == bags.video_ids and len(bags) == 23
    np.testing.assert_allclose(np.array(written["segment_scores"]), expected, rtol=1e-6)
