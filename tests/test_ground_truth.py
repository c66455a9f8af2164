"""anomaly.ground_truth for the frame-folder data sets: label formats, folder layouts, masks; the data sets end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import frame_auc_again, tiny_settings
from PIL import Image

from anomaly import store
from anomaly.errors import AnomalyError
from anomaly.extraction import extract
from anomaly.ground_truth import (
    intervals_from_labels,
    load_dataset,
    parse_ucsd_m,
    read_label_array,
)
from anomaly.masks import iter_masks, mask_at
from anomaly.synthetic import make_video
from ray_jobs import extract as extract_job


def frames(n: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, h, w), dtype=np.uint8)


def write_frames(folder: Path, count: int, ext: str = "tif", *, start: int = 1, width: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames(count, seed=count)):
        Image.fromarray(frame).save(folder / f"{t + start:0{width}d}.{ext}")
    return folder


def write_masks(folder: Path, masks: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t, mask in enumerate(masks):
        Image.fromarray((mask > 0).astype(np.uint8) * 255).save(folder / f"{t + 1:03d}.bmp")
    return folder


# ------------------------------------------------------------------------------------- UCSD .m


UCSD_M = """\
TestDataset = {};
% frame-level ground truth, one line per test clip
TestDataset{end+1}.gt_frame = [61:180];
TestDataset{end+1}.gt_frame = [5:90, 140:200];
TestDataset{end+1}.gt_frame = [1:10 20:30];  % several ranges, space separated
"""


def test_ucsd_m_published_style_with_several_ranges():
    table = parse_ucsd_m(UCSD_M)
    assert table == {1: [(60, 180)], 2: [(4, 90), (139, 200)], 3: [(0, 10), (19, 30)]}


def test_ucsd_m_explicit_indices_and_single_frames():
    text = "TestDataset_ped1.gt{2} = [60:152];\nTestDataset_ped1.gt{1} = [7, 9:12, 11:15];\nnot = [1:2];\n"
    assert parse_ucsd_m(text) == {2: [(59, 152)], 1: [(6, 7), (8, 15)]}


def test_ucsd_m_errors_are_one_line():
    with pytest.raises(AnomalyError, match="no ground-truth lines"):
        parse_ucsd_m("x = 3;\n")
    with pytest.raises(AnomalyError, match=r"gt.m:1: unparsable frame range 'a:b'"):
        parse_ucsd_m("T{end+1}.gt_frame = [a:b];", "gt.m")
    with pytest.raises(AnomalyError, match="1-based ascending"):
        parse_ucsd_m("T{end+1}.gt_frame = [0:4];")


def test_intervals_from_labels_run_length():
    assert intervals_from_labels([0, 1, 1, 0, 0, 1, 0, 1, 1]) == [(1, 3), (5, 6), (7, 9)]
    assert intervals_from_labels(np.ones(4)) == [(0, 4)]
    assert intervals_from_labels(np.zeros(5)) == []


def test_label_array_shapes_and_errors(tmp_path):
    np.save(tmp_path / "a.npy", np.array([[0, 1, 1, 0]]))
    assert read_label_array(str(tmp_path / "a.npy")).tolist() == [0, 1, 1, 0]
    np.save(tmp_path / "b.npy", np.zeros((3, 4)))
    with pytest.raises(AnomalyError, match="1-D"):
        read_label_array(str(tmp_path / "b.npy"))
    (tmp_path / "c.npy").write_bytes(b"junk")
    with pytest.raises(AnomalyError, match="not a .npy"):
        read_label_array(str(tmp_path / "c.npy"))


# ------------------------------------------------------------------------------------- layouts


@pytest.fixture()
def ucsd_ped2(tmp_path) -> Path:
    root = tmp_path / "UCSD_Anomaly_Dataset.v1p2" / "UCSDped2"
    for i in (1, 2):
        write_frames(root / "Train" / f"Train{i:03d}", 20)
    for i, count in ((1, 30), (2, 24), (3, 20)):
        write_frames(root / "Test" / f"Test{i:03d}", count)
    mask = np.zeros((30, 24, 32), np.uint8)
    mask[20:, 4:10, 6:14] = 1  # frames 20..29 (0-based) anomalous, as the .m says (21:30)
    write_masks(root / "Test" / "Test001_gt", mask)
    (root / "Test" / "UCSDped2.m").write_text(
        "TestDataset = {};\nTestDataset{end+1}.gt_frame = [21:30];\n"
        "TestDataset{end+1}.gt_frame = [1:5, 10:12];\nTestDataset{end+1}.gt_frame = [];\n"
    )
    return root


def test_ucsd_layout(ucsd_ped2):
    truth = load_dataset("ucsd", str(ucsd_ped2))
    assert sorted(truth.videos) == [
        "ucsd_ped2_test_Test001",
        "ucsd_ped2_test_Test002",
        "ucsd_ped2_test_Test003",
        "ucsd_ped2_train_Train001",
        "ucsd_ped2_train_Train002",
    ]
    t1 = truth.describe("ucsd_ped2_test_Test001")
    assert t1 == {
        "split": "test",
        "label": 1,
        "anomaly_class": "Anomaly",
        "anomaly_intervals": [[20, 30]],
        "num_frames": 30,
        "dataset": "ucsd_ped2",
        "mask_uri": str(ucsd_ped2 / "Test" / "Test001_gt"),
    }
    assert truth.describe("ucsd_ped2_test_Test002")["anomaly_intervals"] == [[0, 5], [9, 12]]
    empty = truth.describe("ucsd_ped2_test_Test003")
    assert (empty["label"], empty["anomaly_class"], empty["mask_uri"]) == (0, "Normal", None)
    train = truth.describe("ucsd_ped2_train_Train001")
    assert (train["split"], train["label"], train["num_frames"]) == ("train", 0, 20)
    assert truth.fps == 10.0
    assert "Test001_gt" not in " ".join(truth.video_uris().values())
    # the parent folder of several UCSD sets reads each, and "auto" recognises it
    assert sorted(load_dataset("auto", str(ucsd_ped2.parent)).videos) == sorted(truth.videos)


def test_ucsd_missing_entry_is_an_error(ucsd_ped2):
    write_frames(ucsd_ped2 / "Test" / "Test004", 20)
    with pytest.raises(AnomalyError, match=r"no ground truth for 1 ucsd_ped2 test videos \(e.g. Test004\)"):
        load_dataset("ucsd", str(ucsd_ped2))


def test_ucsd_masks_iterate_in_frame_order(ucsd_ped2):
    masks = list(iter_masks(str(ucsd_ped2 / "Test" / "Test001_gt")))
    assert len(masks) == 30 and not masks[19].any() and masks[20].sum() == 6 * 8
    assert mask_at(str(ucsd_ped2 / "Test" / "Test001_gt"), 25).sum() == 48


@pytest.fixture()
def shanghaitech(tmp_path) -> Path:
    root = tmp_path / "shanghaitech"
    write_frames(root / "training" / "frames" / "01_001", 20, "jpg", start=0)
    write_frames(root / "training" / "frames" / "01_002", 20, "jpg", start=0)
    labels = {"01_0014": np.r_[np.zeros(5), np.ones(10), np.zeros(5), np.ones(4)], "01_0015": np.zeros(20)}
    for name, lab in labels.items():
        write_frames(root / "testing" / "frames" / name, len(lab), "jpg", start=0)
        (root / "testing" / "test_frame_mask").mkdir(parents=True, exist_ok=True)
        np.save(root / "testing" / "test_frame_mask" / f"{name}.npy", lab.astype(np.int64))
        pixel = np.zeros((len(lab), 24, 32), np.uint8)
        pixel[lab == 1, :12, :16] = 1
        (root / "testing" / "test_pixel_mask").mkdir(parents=True, exist_ok=True)
        np.save(root / "testing" / "test_pixel_mask" / f"{name}.npy", pixel)
    return root


def test_shanghaitech_layout(shanghaitech):
    truth = load_dataset("auto", str(shanghaitech))
    anomalous = truth.describe("shanghaitech_test_01_0014")
    assert anomalous["anomaly_intervals"] == [[5, 15], [20, 24]] and anomalous["num_frames"] == 24
    assert anomalous["mask_uri"].endswith("test_pixel_mask/01_0014.npy")
    assert truth.describe("shanghaitech_test_01_0015")["label"] == 0
    assert truth.describe("shanghaitech_train_01_001")["split"] == "train"
    masks = list(iter_masks(anomalous["mask_uri"]))
    assert len(masks) == 24 and masks[5].sum() == 12 * 16 and not masks[4].any()


def test_train_list_makes_the_weakly_supervised_split(shanghaitech, tmp_path):
    listing = tmp_path / "SH_Train.txt"
    listing.write_text("01_0014\n01_001  # a normal training video\n")
    truth = load_dataset("shanghaitech", str(shanghaitech), train_list=str(listing))
    splits = {vid: v.split for vid, v in truth.videos.items()}
    assert splits == {
        "shanghaitech_test_01_0014": "train",
        "shanghaitech_train_01_001": "train",
        "shanghaitech_test_01_0015": "test",
        "shanghaitech_train_01_002": "test",
    }
    assert truth.describe("shanghaitech_test_01_0014")["label"] == 1  # labels stay the ground truth's
    listing.write_text("01_9999\n")
    with pytest.raises(AnomalyError, match="name no video"):
        load_dataset("shanghaitech", str(shanghaitech), train_list=str(listing))


def test_missing_label_file_is_an_error(shanghaitech):
    (shanghaitech / "testing" / "test_frame_mask" / "01_0015.npy").unlink()
    with pytest.raises(
        AnomalyError, match=r"no ground truth for 1 shanghaitech test videos \(e.g. 01_0015\)"
    ):
        load_dataset("shanghaitech", str(shanghaitech))


def _avenue(tmp_path) -> Path:
    root = tmp_path / "avenue"
    write_frames(root / "training" / "frames" / "01", 20, "jpg", start=0, width=4)
    write_frames(root / "testing" / "frames" / "01", 22, "jpg", start=0, width=4)
    write_frames(root / "testing" / "frames" / "02", 20, "jpg", start=0, width=4)
    return root


def test_avenue_per_video_npy(tmp_path):
    root = _avenue(tmp_path)
    gt = root / "testing" / "test_frame_mask"
    gt.mkdir()
    np.save(gt / "1.npy", np.r_[np.zeros(10), np.ones(12)])  # "1" labels folder "01"
    np.save(gt / "02.npy", np.zeros(20))
    truth = load_dataset("avenue", str(root))
    assert truth.describe("avenue_test_01")["anomaly_intervals"] == [[10, 22]]
    assert truth.describe("avenue_train_01")["split"] == "train"  # no clash with testing/01
    assert truth.describe("avenue_test_02")["label"] == 0


def test_avenue_concatenated_npy_and_mat_gt(tmp_path):
    from scipy.io import savemat

    root = _avenue(tmp_path)
    np.save(root / "frame_labels_avenue.npy", np.r_[np.zeros(20), np.ones(2), np.ones(3), np.zeros(17)][None])
    truth = load_dataset("avenue", str(root))
    assert truth.describe("avenue_test_01")["anomaly_intervals"] == [[20, 22]]
    assert truth.describe("avenue_test_02")["anomaly_intervals"] == [[0, 3]]
    np.save(root / "short.npy", np.zeros(5))
    with pytest.raises(AnomalyError, match="has 5 labels but the 2 test videos have 42 frames"):
        load_dataset("avenue", str(root), labels=str(root / "short.npy"))
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0] = np.array([[3, 15], [5, 20]])  # [starts; ends], 1-based inclusive
    cells[0, 1] = np.zeros((2, 0))
    savemat(root / "avenue.mat", {"gt": cells})
    truth = load_dataset("avenue", str(root), labels=str(root / "avenue.mat"))
    assert truth.describe("avenue_test_01")["anomaly_intervals"] == [[2, 5], [14, 20]]
    assert truth.describe("avenue_test_02")["anomaly_intervals"] == []


def test_avenue_vol_label_masks(tmp_path):
    from scipy.io import savemat

    root = _avenue(tmp_path)
    folder = root / "ground_truth_demo" / "testing_label_mask"
    folder.mkdir(parents=True)
    for number, count, anomalous in ((1, 22, range(4, 9)), (2, 20, ())):
        vol = np.empty((1, count), dtype=object)
        for t in range(count):
            mask = np.zeros((24, 32), np.uint8)
            if t in anomalous:
                mask[2:6, 3:9] = 1
            vol[0, t] = mask
        savemat(folder / f"{number}_label.mat", {"volLabel": vol})
    truth = load_dataset("avenue", str(root))
    t1 = truth.describe("avenue_test_01")
    assert t1["anomaly_intervals"] == [[4, 9]] and t1["mask_uri"].endswith("1_label.mat")
    masks = list(iter_masks(t1["mask_uri"]))
    assert len(masks) == 22 and masks[4].sum() == 24


def test_unknown_dataset_and_missing_folder(tmp_path):
    with pytest.raises(AnomalyError, match="unknown data set"):
        load_dataset("ped3", str(tmp_path))
    with pytest.raises(AnomalyError, match="no such data set folder"):
        load_dataset("ucsd", str(tmp_path / "nope"))
    (tmp_path / "x").mkdir()
    with pytest.raises(AnomalyError, match="cannot tell the data set"):
        load_dataset("auto", str(tmp_path / "x"))


# ---------------------------------------------------------------------------- store columns


def _row(video_id: str, **extra) -> dict:
    return {
        "video_id": video_id,
        "split": "test",
        "label": 0,
        "anomaly_class": "Normal",
        "num_frames": 40,
        "anomaly_intervals": [],
        "backbone": "r3d_18",
        "features": np.random.default_rng(0).random((32, 6), dtype=np.float32),
        "fps": 25.0,
        "source_uri": "x",
        **extra,
    }


def test_store_optional_columns_round_trip_and_old_files(tmp_path):
    old = store.make_table([_row("old")]).drop_columns(["dataset", "mask_uri", "features_grid"])
    pq.write_table(old, tmp_path / "part-old.parquet")  # a part file written before the columns existed
    grid = np.random.default_rng(1).random((4, 32, 6), dtype=np.float32)
    store.write_rows(
        str(tmp_path), [_row("g", dataset="avenue", mask_uri="m.npy", features_grid=grid), _row("n")]
    )
    table = store.read_table(str(tmp_path))
    by_id = dict(zip(table.column("video_id").to_pylist(), range(table.num_rows), strict=True))
    grids = store.grid_from_arrow(table.column("features_grid"))
    np.testing.assert_array_equal(grids[by_id["g"]], grid)
    assert grids[by_id["n"]] is None and grids[by_id["old"]] is None
    assert table.column("dataset").to_pylist()[by_id["g"]] == "avenue"
    assert table.column("dataset").to_pylist()[by_id["old"]] is None
    bags = store.load_bags(str(tmp_path))
    assert len(bags) == 3 and bags.features.shape == (3, 32, 6)


# ------------------------------------------------------------------------------- end to end


def scene(n: int, anomalous: range, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """32x48 frames: a still textured scene; during ``anomalous`` a bright flickering block top-left."""
    rng = np.random.default_rng(seed)
    base = rng.integers(70, 130, (32, 48, 3))
    frames = np.empty((n, 32, 48, 3), np.uint8)
    masks = np.zeros((n, 32, 48), bool)
    for t in range(n):
        frames[t] = np.clip(base + rng.integers(-3, 4, base.shape), 0, 255)
        if t in anomalous:
            left = 2 + (t * 3) % 8
            frames[t, 3:13, left : left + 12] = 255 if t % 2 else 20
            masks[t, 3:13, left : left + 12] = True
    return frames, masks


def write_scene(folder: Path, frames_: np.ndarray, ext: str) -> None:
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames_):
        Image.fromarray(frame).save(folder / f"{t + 1:03d}.{ext}")


@pytest.fixture()
def two_datasets(tmp_path) -> tuple[Path, Path]:
    n, event = 16, range(5, 12)
    ped2 = tmp_path / "UCSDped2"
    for i in (1, 2, 3):
        write_scene(ped2 / "Train" / f"Train{i:03d}", scene(n, range(0), seed=i)[0], "tif")
    lines = ["TestDataset = {};"]
    for i in range(1, 7):
        anomalous = i <= 4
        frames_, masks = scene(n, event if anomalous else range(0), seed=10 + i)
        write_scene(ped2 / "Test" / f"Test{i:03d}", frames_, "tif")
        if anomalous:
            write_masks(ped2 / "Test" / f"Test{i:03d}_gt", masks)
        lines.append(f"TestDataset{{end+1}}.gt_frame = [{'6:12' if anomalous else ''}];")
    (ped2 / "Test" / "UCSDped2.m").write_text("\n".join(lines) + "\n")
    (tmp_path / "ped2_train.txt").write_text("Train001\nTrain002\nTest001\nTest002\nTest003\n")

    avenue = tmp_path / "avenue"
    for i in (1, 2):
        write_scene(avenue / "training" / "frames" / f"{i:02d}", scene(n, range(0), seed=20 + i)[0], "png")
    # one training video as a container file beside the frame folders (ShanghaiTech ships its training set so)
    make_video(str(avenue / "training" / "videos" / "03.mp4"), num_frames=n, fps=20.0, height=32, width=48)
    (avenue / "testing" / "test_frame_mask").mkdir(parents=True)
    (avenue / "testing" / "test_pixel_mask").mkdir(parents=True)
    for i in range(1, 7):
        anomalous = i <= 4
        frames_, masks = scene(n, event if anomalous else range(0), seed=30 + i)
        write_scene(avenue / "testing" / "frames" / f"{i:02d}", frames_, "png")
        np.save(
            avenue / "testing" / "test_frame_mask" / f"{i:02d}.npy", masks.any(axis=(1, 2)).astype(np.int8)
        )
        if anomalous:
            np.save(avenue / "testing" / "test_pixel_mask" / f"{i:02d}.npy", masks.astype(np.uint8))
    (tmp_path / "avenue_train.txt").write_text("train/01\ntrain/02\ntest/01\ntest/02\ntest/03\n")
    return ped2, avenue


SETTINGS = tiny_settings(clip_len=4, batch_size=20, grid=2)
CLI_SETTINGS = [
    "--backbone",
    "r3d_18",
    "--weights",
    "none",
    "--clip-len",
    "4",
    "--crop",
    "32,32",
    "--grid",
    "2x2",
]


def test_extract_command_reads_a_data_set(two_datasets, tmp_path, capsys):
    ped2, _ = two_datasets
    args = extract_job.get_args_parser().parse_args(
        [
            str(ped2),
            "--out",
            str(tmp_path / "s"),
            "--dataset",
            "auto",
            "--train-list",
            str(tmp_path / "ped2_train.txt"),
        ]
        + CLI_SETTINGS
    )
    videos, truth, settings = extract_job.inputs_from_args(args, extract_job.settings_from_args(args))
    assert "ucsd_ped2: train 2 normal + 3 anomalous, test 3 normal + 1 anomalous, 4 with pixel masks" in (
        capsys.readouterr().out
    )
    assert videos["ucsd_ped2_test_Test001"] == str(ped2 / "Test" / "Test001") and len(videos) == 9
    assert (settings.fps, settings.grid) == (10.0, 2)  # UCSD's recording rate; the grid
    args.fps_default = 7.5
    assert extract_job.inputs_from_args(args, extract_job.settings_from_args(args))[2].fps == 7.5
    args = extract_job.get_args_parser().parse_args([str(ped2), "--out", "x", "--masks", "m"] + CLI_SETTINGS)
    with pytest.raises(AnomalyError, match="--masks: needs --dataset"):
        extract_job.inputs_from_args(args, extract_job.settings_from_args(args))
    args = extract_job.get_args_parser().parse_args(
        [str(ped2), "--out", "x"] + CLI_SETTINGS[:-2] + ["--grid", "2x3"]
    )
    with pytest.raises(AnomalyError, match="grid='2x3': expected GxG"):
        extract_job.settings_from_args(args)


def test_frame_folders_extract_train_evaluate(two_datasets, tmp_path, ray_cluster, capsys):
    """Two data sets (frame folders and one .mp4) -> one store with 2x2 grid features -> train -> evaluate."""
    import json

    from anomaly.config import TrainConfig
    from anomaly.evaluation import evaluate
    from anomaly.reports import format_metrics
    from anomaly.training import fit

    ped2, avenue = two_datasets
    features = str(tmp_path / "store")
    ucsd = load_dataset("ucsd", str(ped2), train_list=str(tmp_path / "ped2_train.txt"))
    truth = ucsd.merged(load_dataset("avenue", str(avenue), train_list=str(tmp_path / "avenue_train.txt")))
    report = extract(truth.video_uris(), features, SETTINGS, truth)  # one pipeline for both sets
    assert len(report.extracted) == 18 and not report.failed

    table = store.read_table(features)
    rows = {r["video_id"]: r for r in table.drop(["features", "features_grid"]).to_pylist()}
    t1 = rows["ucsd_ped2_test_Test001"]
    assert (t1["split"], t1["label"], t1["anomaly_intervals"], t1["num_frames"]) == (
        "train",
        1,
        [[5, 12]],
        16,
    )
    assert t1["dataset"] == "ucsd_ped2" and t1["mask_uri"].endswith("Test001_gt") and t1["fps"] == 25.0
    mp4 = rows["avenue_train_03"]
    assert (mp4["split"], mp4["num_frames"], mp4["fps"], mp4["dataset"]) == ("test", 16, 20.0, "avenue")
    grids = store.grid_from_arrow(table.column("features_grid"))
    assert all(g is not None and g.shape == (4, 32, 512) for g in grids)
    assert store.read_metadata(features).grid == 2

    # the command on the same data set and store finds every video done (same ids, same settings)
    args = extract_job.get_args_parser().parse_args(
        [str(ped2), "--out", features, "--dataset", "ucsd", "--train-list", str(tmp_path / "ped2_train.txt")]
        + CLI_SETTINGS
    )
    assert extract_job.main(args) == 0
    assert "0 extracted, 9 skipped as done, 0 failed" in capsys.readouterr().out

    config = TrainConfig(max_epochs=4, patience=4, batch_size=3, val_fraction=0.2, dropout=0.0)
    fit(features, str(tmp_path / "run"), config, num_workers=1)
    out = tmp_path / "eval"
    metrics = evaluate(features, str(tmp_path / "run"), str(out))
    assert set(metrics["per_dataset"]) == {"ucsd_ped2", "avenue"}
    for name in ("ucsd_ped2", "avenue"):
        per = metrics["per_dataset"][name]
        ids = [vid for vid in store.load_bags(features, split="test").video_ids if vid.startswith(name)]
        assert per["num_videos"] == len(ids) == 4
        assert per["frame_auc"] == pytest.approx(frame_auc_again(out, features, video_ids=ids), abs=1e-6)
        assert not math.isnan(per["region_auc"])  # every data set here has masks
    region = metrics["region_level"]
    assert region["grid"] == 2 and region["videos"] == 2 and region["anomalous_frames"] == 14
    assert not math.isnan(region["auc"])
    detected = region["detection_rate"] * region["anomalous_frames"]  # a share of the 14 frames
    assert detected == pytest.approx(round(detected)) and 0 <= round(detected) <= 14
    assert metrics["heatmaps"] == 2
    for video_id in ("ucsd_ped2_test_Test004", "avenue_test_04"):
        assert (out / "heatmaps" / f"{video_id}.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["per_dataset"]["avenue"]["num_frames"] == 4 * 16
    assert "data set avenue" in format_metrics(metrics)
