"""Frame-folder research data sets: UCSD Ped1/Ped2, CUHK Avenue, ShanghaiTech -> videos and ground truth.

:func:`load_dataset` reads a data set's folder (local or any fsspec URI) in its
published layout and returns a :class:`DatasetTruth`: the videos to extract
(``video id -> URI``) and, per video, what the feature store records (split,
label, class, ``[start, end)`` anomalous frame intervals, frame count, data
set name, pixel-mask location). ``DatasetTruth.describe`` has the same shape
as :meth:`anomaly.ground_truth.ucf_crime.GroundTruth.describe`, so the extractor treats
both alike.

The rules, one each:

- **videos**: under the training folder (``Train``, ``training``,
  ``training_videos``, ``train``; any case) and the testing folder (``Test``,
  ``testing``, ``testing_videos``, ``test``), a video is a sub-folder that
  directly holds image frames (:mod:`anomaly.video.frame_folder`) or a video file
  (``.avi``, ``.mp4``, …). When a split folder holds neither directly, its
  sub-folders are searched one level down (``testing/frames/01_0014/``,
  ``training/videos/01_001.avi``). UCSD's ``Test001_gt`` mask folders are
  never videos.
- **video id** = ``{dataset}_{train|test}_{name}``, e.g. ``ucsd_ped2_test_Test001``,
  ``avenue_test_01``, ``shanghaitech_test_01_0014``: ``train|test`` is the data
  set's own folder the video came from, ``name`` the frame folder's name or the
  video file's stem. Ids are unique across data sets and across Avenue's
  ``training/01`` and ``testing/01``.
- **dataset** = ``ucsd_ped1``, ``ucsd_ped2`` (from the ``UCSDpedN`` folder),
  ``avenue`` or ``shanghaitech``; stored in the store's ``dataset`` column.
- **label**: a video is anomalous (1) when its ground truth marks at least one
  frame, else normal (0); the training folders are all normal (the data sets
  are published that way). **class**: ``Anomaly`` or ``Normal``.
- **split**: the data set's own folders (train / test), unless a train list
  (``train_list=``, one video per line: its id, its ``name`` when unique, or
  ``train/name``/``test/name``) names the training split, e.g. the weakly
  supervised protocol of Zhong et al. (2019) for ShanghaiTech (238 training,
  199 test videos, anomalies in both). MIL training needs anomalous training
  videos, so the data sets' own all-normal training folders alone cannot train
  it: use a train list.
- **intervals**: 0-based ``[start, end)`` frame runs. UCSD's ``.m`` files hold
  MATLAB's 1-based inclusive ranges (``[60:152]`` -> ``[59, 152)``);
  per-frame 0/1 arrays become their runs of ones.
- every test video needs ground truth: one without an entry is an error
  (naming it), never silently normal.

Ground-truth formats read (``labels=`` overrides the search):

========================  ===================================================================
UCSD ``UCSDped1.m``       ``TestDataset{end+1}.gt_frame = [60:152];``, ``….gt{4} = [1:10, 20:30];``:
                          one line per test video; an explicit ``{N}``/``(N)`` is Test00N,
                          ``end+1`` counts lines; several ranges and single frames allowed
per-video ``.npy``        a folder of ``NAME.npy`` 0/1 arrays, one per test video
                          (ShanghaiTech ``testing/test_frame_mask/01_0014.npy``; Avenue
                          reorganisations ``…/01.npy``); ``01.npy`` and ``1.npy`` both match ``01``
concatenated ``.npy``     one 0/1 array over all test videos in natural order
                          (``frame_labels_avenue.npy``, ``frame_labels_ped2.npy``,
                          ``frame_labels_shanghai.npy``), split by the videos' frame counts
``.mat`` with ``gt``      ``avenue.mat``/``ped2.mat``/``shanghaitech.mat``: a cell per test video
                          of ``2 x K`` 1-based inclusive ``[starts; ends]``
Avenue ``N_label.mat``    ``ground_truth_demo/testing_label_mask/1_label.mat``: ``volLabel``, one
                          pixel mask per frame; a frame is anomalous when its mask is not empty
========================  ===================================================================

Pixel masks (for region-level evaluation, see :mod:`anomaly.regions`),
stored as the ``mask_uri`` of each test video: UCSD ``Test/Test001_gt/`` image
folders (nonzero = anomalous pixel), ShanghaiTech ``test_pixel_mask/01_0014.npy``
``(T, H, W)`` arrays, Avenue ``testing_label_mask/N_label.mat``.
"""

from __future__ import annotations

import logging
import posixpath
import re

from anomaly import uris
from anomaly.errors import AnomalyError
from anomaly.ground_truth.discovery import (
    Found,
    base_name,
    child_folder,
    find_path,
    list_sorted,
    per_video_files,
    stem_key,
    videos_in,
)
from anomaly.ground_truth.label_files import (
    intervals_from_labels,
    parse_ucsd_m,
    read_label_array,
    read_mat_intervals,
    read_vol_label,
)
from anomaly.ground_truth.truth import DatasetTruth, DatasetVideo

logger = logging.getLogger(__name__)

DATASET_KINDS = ("ucsd", "avenue", "shanghaitech")
TRAIN_FOLDERS = ("train", "training", "training_videos")
TEST_FOLDERS = ("test", "testing", "testing_videos")

# Frame rates of the recordings: UCSD was filmed at 10 fps, Avenue at 25 fps; ShanghaiTech
# states none in its frames, so the frame-folder default (25) is used.
DEFAULT_FPS = {"ucsd": 10.0, "avenue": 25.0, "shanghaitech": 25.0}


def _split_folders(fs, path: str, root_uri: str) -> tuple[str, str]:
    train = child_folder(fs, path, TRAIN_FOLDERS)
    test = child_folder(fs, path, TEST_FOLDERS)
    if test is None:
        raise AnomalyError(
            root_uri, f"no testing folder ({', '.join(TEST_FOLDERS)}, any case) in the data set folder"
        )
    return train, test


def _make_videos(dataset: str, source_split: str, found: list[Found], where: str) -> dict[str, DatasetVideo]:
    out: dict[str, DatasetVideo] = {}
    for item in found:
        video_id = f"{dataset}_{source_split}_{item.name}"
        if video_id in out:
            raise AnomalyError(where, f"two videos named {item.name!r} in the {source_split} folder")
        out[video_id] = DatasetVideo(
            video_id=video_id,
            uri=item.uri,
            dataset=dataset,
            source_split=source_split,
            name=item.name,
            num_frames=item.num_frames,
        )
    return out


def _check_length(video: DatasetVideo, length: int, where: str) -> None:
    if video.num_frames is not None and video.num_frames != length:
        logger.warning(
            "%s: %d labels for %s, which has %d frames; frames past the labels count as normal",
            where,
            length,
            video.name,
            video.num_frames,
        )


def _assign_labels(dataset: str, test: list[DatasetVideo], labels_uri: str) -> None:
    """Fill ``intervals`` (and ``num_frames`` where unknown) of the test videos from ``labels_uri``.

    Every test video must get an entry: one without is an error naming it, never silently normal.
    """
    lfs, lpath = uris.filesystem(labels_uri)
    lower = labels_uri.lower().rstrip("/")
    if lower.endswith(".m"):
        table = parse_ucsd_m(uris.read_bytes(labels_uri).decode("utf-8", errors="replace"), labels_uri)
        missing, used = [], set()
        for video in test:
            digits = re.search(r"(\d+)$", video.name)  # Test007 <-> entry 7
            if digits is None or int(digits.group(1)) not in table:
                missing.append(video.name)
                continue
            used.add(int(digits.group(1)))
            video.intervals = table[int(digits.group(1))]
        _refuse_missing(missing, labels_uri, dataset)
        if set(table) - used:
            logger.warning("%s: entries %s have no test folder", labels_uri, sorted(set(table) - used)[:5])
        return
    if lower.endswith(".mat"):
        cells = read_mat_intervals(labels_uri)
        if len(cells) != len(test):
            raise AnomalyError(labels_uri, f"has {len(cells)} test videos, the data set folder {len(test)}")
        for video, runs in zip(test, cells, strict=True):
            video.intervals = runs
        return
    if lower.endswith(".npy"):
        labels = read_label_array(labels_uri)
        counts = [v.num_frames for v in test]
        if any(c is None for c in counts):
            raise AnomalyError(
                labels_uri, "a concatenated label array needs frame folders (video files have no frame count)"
            )
        if sum(counts) != labels.size:
            raise AnomalyError(
                labels_uri,
                f"has {labels.size} labels but the {len(test)} test videos have {sum(counts)} frames",
            )
        start = 0
        for video, count in zip(test, counts, strict=True):
            video.intervals = intervals_from_labels(labels[start : start + count])
            start += count
        return
    if not lfs.isdir(lpath):
        raise AnomalyError(labels_uri, "not a label folder, .m, .mat or .npy file")
    arrays = per_video_files(lfs, labels_uri, lpath, (".npy",))
    masks = per_video_files(lfs, labels_uri, lpath, (".mat",))
    if not arrays and not masks:
        raise AnomalyError(labels_uri, "no per-video .npy or _label.mat files in the folder")
    missing = [v.name for v in test if stem_key(v.name) not in arrays and stem_key(v.name) not in masks]
    _refuse_missing(missing, labels_uri, dataset)
    for video in test:
        key = stem_key(video.name)
        if key in arrays:
            labels = read_label_array(arrays[key])
            _check_length(video, labels.size, arrays[key])
            video.intervals = intervals_from_labels(labels)
            video.num_frames = video.num_frames or int(labels.size)
        elif key in masks:
            frames = read_vol_label(masks[key])
            _check_length(video, len(frames), masks[key])
            video.intervals = intervals_from_labels([m.any() for m in frames])
            video.num_frames = video.num_frames or len(frames)
            video.mask_uri = video.mask_uri or masks[key]
    extra = sorted((set(arrays) | set(masks)) - {stem_key(v.name) for v in test})
    if extra:
        logger.warning("%s: %d label files match no test video (e.g. %s)", labels_uri, len(extra), extra[0])


def _refuse_missing(missing: list[str], labels_uri: str, dataset: str) -> None:
    if missing:
        raise AnomalyError(
            labels_uri,
            f"no ground truth for {len(missing)} {dataset} test videos (e.g. {missing[0]}); "
            "every test video needs an entry",
        )


def _attach_masks(test: list[DatasetVideo], masks_uri: str | None, *, beside: bool) -> None:
    """Pixel masks: ``NAME_gt/`` image folders beside the videos, or per-video ``.npy``/``.mat`` files."""
    sources: dict[str, str] = {}
    if masks_uri:
        mfs, mpath = uris.filesystem(masks_uri)
        if not mfs.isdir(mpath):
            raise AnomalyError(masks_uri, "pixel masks must be a folder")
        sources.update(per_video_files(mfs, masks_uri, mpath, (".npy", ".mat")))
        for entry in list_sorted(mfs, mpath):
            if entry.get("type") == "directory":
                sources[stem_key(base_name(entry["name"]))] = uris.in_scheme_of(masks_uri, entry["name"])
    for video in test:
        key = stem_key(video.name)
        if key in sources:
            video.mask_uri = sources[key]
        elif beside and not video.mask_uri:
            parent = posixpath.dirname(video.uri.rstrip("/"))
            candidate = f"{parent}/{video.name}_gt"
            cfs, cpath = uris.filesystem(candidate)
            if cfs.isdir(cpath):
                video.mask_uri = candidate


def load_dataset(
    kind: str,
    root: str,
    *,
    labels: str | None = None,
    masks: str | None = None,
    train_list: str | None = None,
) -> DatasetTruth:
    """Read a data set folder in its published layout (see the module docstring).

    ``kind``: ``ucsd``, ``avenue``, ``shanghaitech`` or ``auto`` (:func:`detect_kind`).
    ``root``: the data set's folder (``UCSDped2``, or ``UCSD_Anomaly_Dataset.v1p2``
    holding both UCSD sets; ``Avenue Dataset``/``avenue``; ``shanghaitech``).
    ``labels``/``masks`` override where the ground truth and pixel masks are looked for.
    """
    if kind == "auto":
        kind = detect_kind(root)
    if kind not in DATASET_KINDS:
        raise AnomalyError("dataset", f"unknown data set {kind!r}; choose one of: {', '.join(DATASET_KINDS)}")
    fs, path = uris.filesystem(root)
    if not fs.isdir(path):
        raise AnomalyError(root, "no such data set folder")
    if kind == "ucsd":
        truth = _load_ucsd(fs, root, path, labels, masks)
    else:
        truth = _load_frames_dataset(kind, fs, root, path, labels, masks)
    if train_list:
        truth = truth.with_train_list(train_list)
    logger.info("%s", truth.summary())
    return truth


def detect_kind(root: str) -> str:
    """The data set a folder holds: by its name (``ucsd``/``pedN``, ``shanghai``, ``avenue`` in it),
    else by its layout (``UCSDped*`` folders or a ``Test/*.m`` file; Avenue's ``testing_label_mask``,
    ``frame_labels_avenue.npy`` or ``avenue.mat``; ShanghaiTech's ``test_frame_mask``)."""
    fs, path = uris.filesystem(root)
    name = base_name(path).lower()
    for hint, kind in ((r"ucsd|ped\d", "ucsd"), ("shanghai", "shanghaitech"), ("avenue", "avenue")):
        if re.search(hint, name):
            return kind
    test = child_folder(fs, path, TEST_FOLDERS)
    if find_path(fs, path, ["ucsdped1", "ucsdped2"], depth=1) or (
        test and any(e["name"].lower().endswith(".m") for e in list_sorted(fs, test))
    ):
        return "ucsd"
    if find_path(fs, path, ["testing_label_mask", "frame_labels_avenue.npy", "avenue.mat"]):
        return "avenue"
    if find_path(fs, path, ["test_frame_mask", "frame_labels_shanghai.npy", "shanghaitech.mat"]):
        return "shanghaitech"
    raise AnomalyError(
        root, "cannot tell the data set from its layout; pass `dataset` ucsd|avenue|shanghaitech"
    )


def _ucsd_name(folder: str) -> str:
    match = re.search(r"(?i)ped\s*(\d+)", folder)
    return f"ucsd_ped{match.group(1)}" if match else "ucsd"


def _load_ucsd(fs, root: str, path: str, labels: str | None, masks: str | None) -> DatasetTruth:
    """``UCSDpedN/{Train,Test}/…`` with ``Test/UCSDpedN.m``; a folder of several UCSDpedN sets reads each."""
    if child_folder(fs, path, TEST_FOLDERS) is None:
        sets = [
            e["name"]
            for e in list_sorted(fs, path)
            if e.get("type") == "directory" and child_folder(fs, e["name"], TEST_FOLDERS)
        ]
        if not sets:
            raise AnomalyError(
                root, "no UCSD set here (expected Train/ and Test/, or UCSDped1/ and UCSDped2/)"
            )
        if labels or masks:
            raise AnomalyError("labels", "give one UCSDpedN folder when overriding labels or masks")
        truth = DatasetTruth(fps=DEFAULT_FPS["ucsd"])
        for sub in sets:
            truth = truth.merged(_load_ucsd(fs, uris.in_scheme_of(root, sub), sub, None, None))
        return truth
    dataset = _ucsd_name(base_name(path))
    train, test = _split_folders(fs, path, root)
    videos = _make_videos(dataset, "train", videos_in(fs, root, train, skip_gt=True) if train else [], root)
    test_videos = _make_videos(dataset, "test", videos_in(fs, root, test, skip_gt=True), root)
    if labels is None:
        m_files = [
            e["name"]
            for e in list_sorted(fs, test) + list_sorted(fs, path)
            if e["name"].lower().endswith(".m")
        ]
        preferred = [m for m in m_files if _ucsd_name(base_name(m)) == dataset] or m_files
        if not preferred:
            raise AnomalyError(root, "no UCSD ground-truth .m file (e.g. Test/UCSDped2.m); pass `labels`")
        labels = uris.in_scheme_of(root, preferred[0])
    tests = list(test_videos.values())
    _assign_labels(dataset, tests, labels)
    _attach_masks(tests, masks, beside=True)
    videos.update(test_videos)
    return DatasetTruth(videos, fps=DEFAULT_FPS["ucsd"])


_LABEL_SEARCH = {
    "avenue": [
        "test_frame_mask",
        "testing_label_mask",
        "frame_labels_avenue.npy",
        "avenue.mat",
    ],
    "shanghaitech": ["test_frame_mask", "frame_labels_shanghai.npy", "shanghaitech.mat", "shanghai.mat"],
}
_MASK_SEARCH = {
    "avenue": ["test_pixel_mask", "testing_label_mask"],
    "shanghaitech": ["test_pixel_mask"],
}


def _load_frames_dataset(
    kind: str, fs, root: str, path: str, labels: str | None, masks: str | None
) -> DatasetTruth:
    """Avenue and ShanghaiTech: ``training``/``testing`` folders, per-frame label arrays."""
    train, test = _split_folders(fs, path, root)
    videos = _make_videos(kind, "train", videos_in(fs, root, train) if train else [], root)
    test_videos = _make_videos(kind, "test", videos_in(fs, root, test), root)
    if not test_videos:
        raise AnomalyError(uris.in_scheme_of(root, test), "no test videos (frame folders or video files)")
    if labels is None:
        found = find_path(fs, path, _LABEL_SEARCH[kind], depth=3)
        if found is None:
            raise AnomalyError(
                root, f"no {kind} ground truth found ({', '.join(_LABEL_SEARCH[kind])}); pass `labels`"
            )
        labels = uris.in_scheme_of(root, found)
    tests = list(test_videos.values())
    _assign_labels(kind, tests, labels)
    if masks is None:
        found = find_path(fs, path, _MASK_SEARCH[kind], depth=3)
        masks = uris.in_scheme_of(root, found) if found else None
    if masks is not None and masks.rstrip("/") != labels.rstrip("/"):
        _attach_masks(tests, masks, beside=False)
    videos.update(test_videos)
    return DatasetTruth(videos, fps=DEFAULT_FPS[kind])
