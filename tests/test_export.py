"""Export to the published formats and import back: the same bags."""

from __future__ import annotations

import numpy as np
import pytest

from anomaly import store as feature_store
from anomaly.crops import CROPS_COLUMN, crop_bags_from_arrow
from anomaly.errors import AnomalyError
from anomaly.export import export_features
from anomaly.ground_truth import GroundTruth
from anomaly.importers import import_features
from ray_jobs import export_features as export_job

IDS = ["Abuse028_x264", "Abuse001_x264", "Normal_Videos_006_x264", "Normal_Videos308_x264"]


def make_store(path, truth, *, crops: int, dim: int = 24, seed: int = 0) -> str:
    """A store as extraction writes it: L2-normalised segments per crop, features their mean."""
    rng = np.random.default_rng(seed)
    rows = []
    for video_id in IDS:
        bags = rng.standard_normal((crops, 32, dim)).astype(np.float32)
        bags /= np.linalg.norm(bags, axis=-1, keepdims=True)
        rows.append(
            {
                "video_id": video_id,
                **truth.describe(video_id),
                "backbone": "i3d_r50",
                "features": bags.mean(axis=0) if crops > 1 else bags[0],
                "features_crops": bags if crops > 1 else None,
            }
        )
    store = str(path)
    feature_store.ensure_metadata(
        store,
        feature_store.StoreMetadata(
            backbone="i3d_r50", feature_dim=dim, source="extract", crops=crops if crops > 1 else None
        ),
    )
    feature_store.write_rows(store, rows)
    return store


def crop_table(store: str) -> dict[str, np.ndarray]:
    table = feature_store.read_table(store, columns=[CROPS_COLUMN])
    return dict(
        zip(
            table.column("video_id").to_pylist(),
            crop_bags_from_arrow(table.column(CROPS_COLUMN)),
            strict=True,
        )
    )


@pytest.fixture(scope="module")
def truth(shared_data):
    return GroundTruth.load(str(shared_data / "Temporal_Anomaly_Annotation.txt"), None)


@pytest.mark.parametrize(
    ("fmt", "crops"), [("sultani-txt", 1), ("npy", 1), ("npy", 10), ("rtfm-npy", 10), ("rtfm-npy", 1)]
)
def test_export_then_import_gives_the_same_bags(tmp_path, truth, fmt, crops, ray_cluster):
    store = make_store(tmp_path / "store", truth, crops=crops)
    out = tmp_path / "out"
    report = export_features(store, str(out), fmt)
    assert sorted(report.written) == sorted(IDS)
    suffix = ".txt" if fmt == "sultani-txt" else ".npy"
    first = out / f"Abuse028_x264{suffix}"
    if fmt == "sultani-txt":
        assert (
            len(first.read_text().splitlines()) == 32 and len(first.read_text().split("\n")[0].split()) == 24
        )
    elif fmt == "rtfm-npy":
        assert np.load(first).shape == (32, crops, 24)
        train = (out / "rtfm-train.list").read_text().splitlines()
        assert [line.rsplit("/", 1)[-1] for line in train] == [
            "Abuse001_x264.npy",
            "Normal_Videos308_x264.npy",
        ]
    else:
        assert np.load(first).shape == ((32, 24) if crops == 1 else (32, 10, 24))

    back = str(tmp_path / "back")
    imported = import_features(str(out), back, truth=truth, backbone="i3d_r50")
    assert imported.total_imported == len(IDS) and not imported.skipped
    original, again = feature_store.load_bags(store), feature_store.load_bags(back)
    order = [again.video_ids.index(v) for v in original.video_ids]
    np.testing.assert_array_equal(again.features[order], original.features)
    assert [again.splits[i] for i in order] == original.splits
    assert [again.intervals[i] for i in order] == original.intervals
    np.testing.assert_array_equal(again.labels[order], original.labels)
    if crops > 1:
        before, after = crop_table(store), crop_table(back)
        for video_id in IDS:
            np.testing.assert_array_equal(after[video_id], before[video_id])


def test_command_and_its_errors(tmp_path, truth, capsys):
    store = make_store(tmp_path / "store", truth, crops=1)
    args = export_job.get_args_parser().parse_args(
        [store, "--format", "sultani-txt", "--out", str(tmp_path / "txt"), "--split", "test"]
    )
    assert export_job.main(args) == 0
    assert "exported 2 videos" in capsys.readouterr().out
    with pytest.raises(AnomalyError, match="no clip table"):
        export_features(store, str(tmp_path / "x"), "rtfm-npy", level="clips")
    with pytest.raises(AnomalyError, match="for format rtfm-npy"):
        export_features(store, str(tmp_path / "x"), "npy", level="clips")
