import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from anomaly import store
from anomaly.ground_truth import GroundTruth
from anomaly.importers import import_features, parse_feature_file
from ray_jobs import import_features as import_job


@pytest.fixture()
def feature_tree(tmp_path, shared_data):
    """The 10 real C3D files plus ragged, empty, unparsable and .npy files."""
    src = tmp_path / "features"
    (src / "Test").mkdir(parents=True)
    real = sorted((shared_data / "sample_c3d_features").glob("*.txt"))
    for path in real:
        shutil.copy(path, src / "Test" / path.name)
    rng = np.random.default_rng(0)
    rows33 = rng.random((33, 4096), dtype=np.float32)
    np.savetxt(src / "Abuse001_x264.txt", rows33, fmt="%.6f")  # train, 33 rows
    np.savetxt(src / "Normal_Videos308_x264.txt", rng.random((31, 4096)), fmt="%.6f")  # train, 31 rows
    np.save(src / "Arrest002_x264.npy", rng.random((32, 4096), dtype=np.float32))
    (src / "Burglary005_x264.txt").write_bytes(b"")  # empty, as in the published releases
    (src / "Fighting003_x264.txt").write_text("0.1 0.2 abc\n0.3 0.4 0.5\n")
    (src / "Robbery010_x264.txt").write_text("0.1 0.2 0.3\n0.4 0.5\n")
    return src, real, rows33


def test_parse_ragged_rows_repooled(feature_tree):
    src, _, rows33 = feature_tree
    parsed = parse_feature_file("x.txt", (src / "Abuse001_x264.txt").read_bytes())
    assert parsed.shape == (33, 4096)
    np.testing.assert_allclose(parsed, rows33, atol=1e-6)


def test_import_real_and_bad_files(feature_tree, tmp_path, shared_data, ray_cluster, capsys):
    src, real, rows33 = feature_tree
    out = tmp_path / "store"
    args = import_job.get_args_parser().parse_args(
        [
            str(src),
            "--out",
            str(out),
            "--annotations",
            str(shared_data / "Temporal_Anomaly_Annotation.txt"),
            "--frame-counts",
            str(shared_data / "Test_Annotation_with_frame_counts.txt"),
            str(shared_data / "Train_Annotation_with_frame_counts.txt"),
            "--backbone",
            "c3d",
        ]
    )
    assert import_job.main(args) == 0
    printed = capsys.readouterr().out
    assert "imported 13 videos" in printed
    assert "skipped 3 files" in printed
    assert "Burglary005_x264.txt: empty file (0 bytes)" in printed
    assert "Fighting003_x264.txt: could not parse numbers" in printed
    assert "Robbery010_x264.txt: rows have different widths" in printed
    assert "test  anomalous 8" in printed and "test  normal    2" in printed

    table = pq.read_table(str(out))
    assert table.num_rows == 13
    bags = store.load_bags(str(out))
    assert bags.features.shape == (13, 32, 4096)
    # Real files with 32 rows are kept bit for bit.
    first = real[0]
    i = bags.video_ids.index(first.stem)
    np.testing.assert_allclose(bags.features[i], np.loadtxt(first, dtype=np.float32), rtol=1e-6)
    # Official ground truth carried over.
    truth = GroundTruth.load(str(shared_data / "Temporal_Anomaly_Annotation.txt"), None).temporal
    for vid, split, ivs, frames in zip(
        bags.video_ids, bags.splits, bags.intervals, bags.num_frames, strict=True
    ):
        if vid in truth:
            assert split == "test" and ivs == truth[vid].intervals and frames > 0
    j = bags.video_ids.index("Abuse001_x264")
    assert bags.splits[j] == "train" and bags.labels[j] == 1 and bags.num_frames[j] > 0
    # Re-pooled by the one rule (no L2): a 33-row file's segments keep the published scale.
    from anomaly.segments import pool_segments

    np.testing.assert_allclose(bags.features[j], pool_segments(rows33, l2=False), atol=1e-6)
    k = bags.video_ids.index("Normal_Videos308_x264")
    assert bags.labels[k] == 0 and bags.classes[k] == "Normal"

    # Re-running imports nothing twice.
    assert import_job.main(args) == 0
    assert "imported 0 videos" in capsys.readouterr().out
    assert len(store.load_bags(str(out))) == 13


def test_import_refuses_width_mismatch(tmp_path, ray_cluster):
    src = tmp_path / "src"
    src.mkdir()
    np.save(src / "Abuse001_x264.npy", np.ones((32, 8), dtype=np.float32))
    np.save(src / "Abuse002_x264.npy", np.ones((32, 9), dtype=np.float32))
    report = import_features(str(src), str(tmp_path / "store"), truth=GroundTruth())
    assert report.total_imported == 1
    assert len(report.skipped) == 1 and "-d but the store holds" in report.skipped[0][1]


@pytest.mark.slow  # the command starts Ray before it looks at the source
def test_missing_source_is_one_line_error(tmp_path, capsys):
    args = import_job.get_args_parser().parse_args([str(tmp_path / "missing"), "--out", str(tmp_path / "s")])
    from anomaly import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.run(
            import_job.main,
            import_job.get_args_parser(),
            [str(tmp_path / "missing"), "--out", str(tmp_path / "s")],
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing" in err and "\n" not in err
    assert args.src.endswith("missing")


def test_ten_crop_files_and_feature_suffixes(tmp_path, ray_cluster, shared_data):
    src = tmp_path / "i3d"
    src.mkdir()
    rng = np.random.default_rng(1)
    crops = [rng.random((40, 16), dtype=np.float32) for _ in range(3)]
    for i, crop in enumerate(crops):  # RTFM-style per-crop files of one test video
        np.save(src / f"Abuse028_x264__{i}.npy", crop)
    np.save(
        src / "Normal_Videos_006_x264_i3d.npy", rng.random((32, 3, 16), dtype=np.float32)
    )  # (T, crops, D)
    np.save(src / "Arrest001_x264.npy", rng.random((32, 16), dtype=np.float32))  # one crop: not this store's
    truth = GroundTruth.load(str(shared_data / "Temporal_Anomaly_Annotation.txt"), None)
    report = import_features(str(src), str(tmp_path / "store"), truth=truth, backbone="i3d")
    assert report.total_imported == 2
    assert [(uri.rsplit("/", 1)[-1], why) for uri, why in report.skipped] == [
        ("Arrest001_x264.npy", "1 crops but the store holds 3 per video")
    ]
    bags = store.load_bags(str(tmp_path / "store"))
    assert sorted(bags.video_ids) == ["Abuse028_x264", "Normal_Videos_006_x264"]
    i = bags.video_ids.index("Abuse028_x264")
    assert bags.splits[i] == "test" and bags.intervals[i] == [(164, 240)]
    from anomaly.segments import pool_segments

    np.testing.assert_allclose(bags.features[i], pool_segments(np.mean(crops, axis=0), l2=False), rtol=1e-5)


def test_ten_crop_releases_keep_their_crop_axis(tmp_path, ray_cluster, shared_data):
    """(T, 10, D) arrays (the I3D extractor's output) and __0 … __9 files (RTFM's lists) alike."""
    from anomaly.crops import crop_bags_from_arrow

    rng = np.random.default_rng(2)
    per_file, stacked = tmp_path / "files", tmp_path / "stacked"
    per_file.mkdir()
    stacked.mkdir()
    crops = rng.random((10, 45, 8), dtype=np.float32)
    for k in range(10):  # written in an order that is not the crops' own (numeric) order
        np.save(per_file / f"Abuse028_x264__{9 - k}.npy", crops[9 - k])
    np.save(stacked / "Abuse028_x264.npy", crops.transpose(1, 0, 2))  # (T, 10, D)
    truth = GroundTruth.load(str(shared_data / "Temporal_Anomaly_Annotation.txt"), None)
    from anomaly.segments import pool_segments

    expected = np.stack([pool_segments(c, l2=False) for c in crops])
    for src in (per_file, stacked):
        out = str(tmp_path / f"store-{src.name}")
        report = import_features(str(src), out, truth=truth, backbone="i3d_r50")
        assert report.total_imported == 1 and not report.skipped
        assert store.read_metadata(out).crops == 10
        table = store.read_table(out, columns=["features", "features_crops"])
        np.testing.assert_allclose(
            crop_bags_from_arrow(table.column("features_crops"))[0], expected, rtol=1e-6
        )
        np.testing.assert_allclose(store.load_bags(out).features[0], expected.mean(0), rtol=1e-5)
