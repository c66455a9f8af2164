import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from anomaly import store, uris
from anomaly.errors import AnomalyError
from anomaly.synthetic.features import make_feature_store, synthetic_rows


def _rows(n=3, dim=8):
    return [
        {
            "video_id": f"Explosion{i:03d}_x264" if i % 2 else f"Normal_Videos_{i:03d}_x264",
            "split": "test",
            "label": i % 2,
            "anomaly_class": "Explosion" if i % 2 else "Normal",
            "num_frames": 100 + i,
            "anomaly_intervals": [[10, 20], [30, 40]] if i % 2 else [],
            "backbone": "c3d",
            "features": np.random.default_rng(i).random((32, dim), dtype=np.float32),
        }
        for i in range(n)
    ]


def test_roundtrip_plain_pyarrow(tmp_path):
    rows = _rows()
    store.write_rows(str(tmp_path), rows)
    table = pq.read_table(str(tmp_path))  # plain pyarrow, no project code
    assert table.num_rows == 3
    assert set(store.SCHEMA.names) <= set(table.column_names)
    bags = store.load_bags(str(tmp_path))
    order = [bags.video_ids.index(r["video_id"]) for r in rows]
    np.testing.assert_array_equal(bags.features[order], np.stack([r["features"] for r in rows]))
    assert bags.intervals[order[1]] == [(10, 20), (30, 40)]
    assert bags.num_frames[order].tolist() == [100, 101, 102]


def test_roundtrip_ray_data(tmp_path, ray_cluster):
    store.write_rows(str(tmp_path), _rows(4))
    store.record_failures(
        str(tmp_path), [{"uri": "x.mp4", "video_id": "x", "reason": "empty file", "stage": "decode"}]
    )
    ds = ray_cluster.data.read_parquet(str(tmp_path))
    assert ds.count() == 4  # _failures.parquet and _store.json are not rows
    row = ds.take(1)[0]
    assert np.stack([np.asarray(seg, dtype=np.float32) for seg in row["features"]]).shape == (32, 8)


def test_store_on_real_s3(s3_bucket):
    uri = f"{s3_bucket}/features"
    make_feature_store(uri, num_train=6, num_test=4, feature_dim=16)
    fs, path = uris.filesystem(uri)
    assert any(p.endswith(".parquet") for p in fs.ls(path))
    bags = store.load_bags(uri, split="test")
    assert len(bags) == 4 and bags.features.shape == (4, 32, 16)
    assert store.read_metadata(uri).feature_dim == 16
    store.record_failures(
        uri, [{"uri": "s3://b/v.mp4", "video_id": "v", "reason": "truncated", "stage": "decode"}]
    )
    assert store.read_failures(uri).column("reason").to_pylist() == ["truncated"]


def test_metadata_refuses_mixed_settings(tmp_path):
    store.ensure_metadata(str(tmp_path), store.StoreMetadata(backbone="c3d", feature_dim=4096))
    store.ensure_metadata(str(tmp_path), store.StoreMetadata(backbone="c3d", feature_dim=4096))  # same: fine
    with pytest.raises(AnomalyError, match="backbone='c3d' .store. vs 'i3d' .this run.; feature_dim=4096"):
        store.ensure_metadata(str(tmp_path), store.StoreMetadata(backbone="i3d", feature_dim=1024))


def test_duplicate_rows_are_read_once(tmp_path):
    rows = synthetic_rows(num_train=2, num_test=0, feature_dim=4)
    store.write_rows(str(tmp_path), rows)
    store.write_rows(str(tmp_path), rows[:1])
    assert len(store.load_bags(str(tmp_path))) == 2


def test_missing_store_is_one_line_error(tmp_path):
    with pytest.raises(AnomalyError, match="feature store not found"):
        store.load_bags(str(tmp_path / "nope"))
    assert store.video_ids(str(tmp_path / "nope")) == set()


def test_failures_merge_and_clear(tmp_path):
    s = str(tmp_path)
    store.record_failures(s, [{"uri": "a", "reason": "r1"}, {"uri": "b", "reason": "r2"}])
    store.record_failures(s, [{"uri": "a", "reason": "r3"}])
    failures = store.read_failures(s).to_pydict()
    assert dict(zip(failures["uri"], failures["reason"], strict=True)) == {"a": "r3", "b": "r2"}
    store.clear_failures(s, ["a"])
    assert store.read_failures(s).column("uri").to_pylist() == ["b"]


def test_metadata_object_is_the_file(tmp_path):
    """StoreMetadata round-trips through _store.json; unset fields are left out, unknown keys kept."""
    meta = store.StoreMetadata(backbone="c3d", feature_dim=4096, clip_len=16, stride=16, crop=(112, 112))
    store.ensure_metadata(str(tmp_path), meta)
    written = json.loads((tmp_path / store.METADATA_FILE).read_text())
    assert written["crop"] == [112, 112] and written["num_segments"] == 32
    assert "grid" not in written and "resize" not in written  # unset: absent, as in older stores
    assert store.read_metadata(str(tmp_path)) == meta
    newer = store.StoreMetadata.from_dict({**written, "clip_table": "clips/"})
    assert newer == meta and newer.extra == {"clip_table": "clips/"}
    assert newer.to_dict()["clip_table"] == "clips/"
    with pytest.raises(AnomalyError, match="x.json: store metadata without a backbone name"):
        store.StoreMetadata.from_dict({"feature_dim": 3}, where="x.json")
    (tmp_path / store.METADATA_FILE).write_text("{not json")
    with pytest.raises(AnomalyError, match="_store.json: not JSON: "):
        store.read_metadata(str(tmp_path))
