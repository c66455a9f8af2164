from anomaly.ground_truth import GroundTruth, class_of, read_frame_counts, read_temporal_annotations


def test_official_temporal_file(shared_data):
    table = read_temporal_annotations(str(shared_data / "Temporal_Anomaly_Annotation.txt"))
    assert len(table) == 290
    abuse = table["Abuse028_x264"]
    assert abuse.anomaly_class == "Abuse" and abuse.intervals == [(164, 240)]  # 1-based inclusive -> [s-1, e)
    normals = [a for a in table.values() if a.anomaly_class == "Normal"]
    assert normals and all(a.intervals == [] for a in normals)
    assert any(len(a.intervals) == 2 for a in table.values())


def test_frame_count_files(shared_data):
    test = read_frame_counts(str(shared_data / "Test_Annotation_with_frame_counts.txt"))
    train = read_frame_counts(str(shared_data / "Train_Annotation_with_frame_counts.txt"))
    assert len(test) == 290 and len(train) == 1610
    assert test["Arson022_x264"] == 8640 and train["Vandalism048_x264"] == 7183


def test_rules_split_label_class(shared_data):
    truth = GroundTruth.load(
        str(shared_data / "Temporal_Anomaly_Annotation.txt"),
        [str(shared_data / "Test_Annotation_with_frame_counts.txt")],
    )
    test_normal = truth.describe("Normal_Videos_006_x264")
    assert (
        test_normal["split"] == "test"
        and test_normal["label"] == 0
        and test_normal["anomaly_class"] == "Normal"
    )
    train = truth.describe("Vandalism048_x264")
    assert train == {
        "split": "train",
        "label": 1,
        "anomaly_class": "Vandalism",
        "anomaly_intervals": [],
        "num_frames": None,
    }
    assert (
        class_of("RoadAccidents002_x264") == "RoadAccidents" and class_of("Normal_Videos826_x264") == "Normal"
    )


def test_bundled_files_match_shared(shared_data):
    bundled = GroundTruth.bundled_ucf_crime()
    assert len(bundled.temporal) == 290 and len(bundled.frame_counts) == 1900
