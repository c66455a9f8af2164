"""Frame-folder research data sets: UCSD Ped1/Ped2, CUHK Avenue, ShanghaiTech -> videos and ground truth.

:func:`load_dataset` reads a data set's folder (local or any fsspec URI) in its
published layout and returns a :class:`DatasetTruth`: the videos to extract
(``video id -> URI``) and, per video, what the feature store records (split,
label, class, ``[start, end)`` anomalous frame intervals, frame count, data
set name, pixel-mask location). ``DatasetTruth.describe`` has the same shape
as :meth:`anomaly.annotations.GroundTruth.describe`, so the extractor treats
both alike.

The rules, one each:

- **videos**: under the training folder (``Train``, ``training``,
  ``training_videos``, ``train``; any case) and the testing folder (``Test``,
  ``testing``, ``testing_videos``, ``test``), a video is a sub-folder that
  directly holds image frames (:mod:`anomaly.frame_folder`) or a video file
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

Pixel masks (for region-level evaluation, see :mod:`anomaly.localization`),
stored as the ``mask_uri`` of each test video: UCSD ``Test/Test001_gt/`` image
folders (nonzero = anomalous pixel), ShanghaiTech ``test_pixel_mask/01_0014.npy``
``(T, H, W)`` arrays, Avenue ``testing_label_mask/N_label.mat``.
"""

from __future__ import annotations

import io
import logging
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from anomaly import uris
from anomaly.errors import AnomalyError
from anomaly.frame_folder import is_image_name, natural_key

logger = logging.getLogger(__name__)

DATASET_KINDS = ("ucsd", "avenue", "shanghaitech")
VIDEO_FILE_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".ts")
TRAIN_FOLDERS = ("train", "training", "training_videos")
TEST_FOLDERS = ("test", "testing", "testing_videos")
ANOMALY_CLASS = "Anomaly"

# Frame rates of the recordings: UCSD was filmed at 10 fps, Avenue at 25 fps; ShanghaiTech
# states none in its frames, so the frame-folder default (25) is used.
DEFAULT_FPS = {"ucsd": 10.0, "avenue": 25.0, "shanghaitech": 25.0}


# ------------------------------------------------------------------------------------ small pieces


def intervals_from_labels(labels: Sequence[int] | np.ndarray) -> list[tuple[int, int]]:
    """0-based ``[start, end)`` runs of nonzero entries of a per-frame 0/1 array."""
    flags = np.asarray(labels).reshape(-1) != 0
    edges = np.flatnonzero(np.diff(np.concatenate([[False], flags, [False]]).astype(np.int8)))
    return [(int(s), int(e)) for s, e in zip(edges[0::2], edges[1::2], strict=True)]


def merge_intervals(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with overlapping or touching ``[start, end)`` runs joined."""
    out: list[list[int]] = []
    for start, end in sorted((int(s), int(e)) for s, e in intervals if e > s):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def _one_based_ranges(text: str, where: str) -> list[tuple[int, int]]:
    """``60:152, 170:180 5`` (MATLAB 1-based inclusive) -> 0-based ``[start, end)`` runs."""
    runs = []
    for token in re.split(r"[,;\s]+", text.strip()):
        if not token:
            continue
        parts = token.split(":")
        try:
            numbers = [int(float(p)) for p in parts]
        except ValueError:
            raise AnomalyError(where, f"unparsable frame range {token!r}") from None
        if len(numbers) == 1:
            first = last = numbers[0]
        elif len(numbers) == 2:
            first, last = numbers
        elif len(numbers) == 3 and numbers[1] == 1:  # a:1:b
            first, last = numbers[0], numbers[2]
        else:
            raise AnomalyError(where, f"unsupported frame range {token!r} (expected a:b)")
        if first < 1 or last < first:
            raise AnomalyError(where, f"frame range {token!r} is not 1-based ascending")
        runs.append((first - 1, last))
    return merge_intervals(runs)


_M_LINE = re.compile(r"^\s*(?P<lhs>[A-Za-z_][\w.{}()+\s]*?)\s*=\s*\[(?P<body>[^\]]*)\]\s*;?")
_M_INDEX = re.compile(r"[{(]\s*(?:(?P<n>\d+)|(?P<end>end\s*\+\s*1))\s*[})]")


def parse_ucsd_m(text: str, where: str = "UCSD .m file") -> dict[int, list[tuple[int, int]]]:
    """UCSD's MATLAB ground truth -> ``{test video number (1-based): [[start, end), …]}``.

    Accepts the published ``TestDataset{end+1}.gt_frame = [61:180];`` lines as
    well as explicit indices (``TestDataset_ped1.gt{3} = [1:10, 20:30];``,
    ``TestDataset(3).gt_frame = …``); ``end+1`` lines are numbered in order.
    Only assignments to a field whose name starts with ``gt`` count; comments
    (``%``) and other lines are ignored.
    """
    table: dict[int, list[tuple[int, int]]] = {}
    counter = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("%", 1)[0]
        match = _M_LINE.match(line)
        if not match:
            continue
        lhs = match.group("lhs")
        fields = [f for f in re.findall(r"\.\s*([A-Za-z_]\w*)", lhs)]
        if not any(f.lower().startswith("gt") for f in fields):
            continue
        index_match = _M_INDEX.search(lhs)
        if index_match and index_match.group("n"):
            index = int(index_match.group("n"))
        else:
            index = counter + 1
        counter = max(counter, index)
        runs = _one_based_ranges(match.group("body"), f"{where}:{number}")
        table[index] = merge_intervals(table.get(index, []) + runs)
    if not table:
        raise AnomalyError(where, "no ground-truth lines like 'TestDataset{end+1}.gt_frame = [61:180];'")
    return table


def read_label_array(uri: str) -> np.ndarray:
    """A ``.npy`` of per-frame labels -> int8 0/1 ``(frames,)`` (``(1, N)`` and ``(N, 1)`` accepted)."""
    try:
        array = np.load(io.BytesIO(uris.read_bytes(uri)), allow_pickle=False)
    except AnomalyError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise AnomalyError(uri, f"not a .npy array: {exc}") from exc
    array = np.asarray(array)
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise AnomalyError(uri, f"expected one label per frame (1-D), got shape {array.shape}")
    if array.dtype.kind not in "biuf" or (array.dtype.kind == "f" and not np.isfinite(array).all()):
        raise AnomalyError(uri, f"labels must be finite numbers, got {array.dtype}")
    return (array != 0).astype(np.int8)


def _loadmat(uri: str) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError as exc:  # scipy comes with scikit-learn; say so if a slim install lacks it
        raise AnomalyError(uri, "reading .mat files needs scipy (pip install scipy)") from exc
    try:
        return loadmat(io.BytesIO(uris.read_bytes(uri)), squeeze_me=False)
    except AnomalyError:
        raise
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for foreign or v7.3 files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AnomalyError(uri, f"unreadable .mat file: {first}") from exc


def read_mat_intervals(uri: str) -> list[list[tuple[int, int]]]:
    """``avenue.mat``/``ped2.mat``-style ``gt``: per test video a ``2 x K`` array of 1-based inclusive runs."""
    content = _loadmat(uri)
    if "gt" not in content:
        keys = sorted(k for k in content if not k.startswith("__"))
        raise AnomalyError(uri, f"no 'gt' variable (has: {', '.join(keys) or 'nothing'})")
    cells = np.asarray(content["gt"], dtype=object).reshape(-1)
    out = []
    for i, cell in enumerate(cells):
        runs = np.asarray(cell, dtype=np.float64)
        if runs.size == 0:
            out.append([])
            continue
        if runs.ndim != 2 or runs.shape[0] != 2:
            raise AnomalyError(uri, f"gt{{{i + 1}}} has shape {runs.shape}; expected 2 x K [starts; ends]")
        out.append(merge_intervals((int(s) - 1, int(e)) for s, e in runs.T))
    return out


def read_vol_label(uri: str) -> list[np.ndarray]:
    """Avenue ``N_label.mat``: ``volLabel``, one ``(H, W)`` mask per frame -> list of bool arrays."""
    content = _loadmat(uri)
    if "volLabel" not in content:
        raise AnomalyError(uri, "no 'volLabel' variable (expected Avenue's testing_label_mask file)")
    cells = np.asarray(content["volLabel"], dtype=object).reshape(-1)
    return [np.asarray(cell) != 0 for cell in cells]


# ----------------------------------------------------------------------------------------- listing


def _name(path: str) -> str:
    return posixpath.basename(path.replace("\\", "/").rstrip("/"))


def _uri(root_uri: str, path: str) -> str:
    """An fsspec path back as a URI in ``root_uri``'s scheme."""
    if uris.is_local(root_uri) or "://" in path:
        return path
    return f"{root_uri.split('://', 1)[0]}://{path}"


def _ls(fs, path: str) -> list[dict]:
    try:
        return sorted(fs.ls(path, detail=True), key=lambda e: natural_key(_name(e["name"])))
    except (FileNotFoundError, NotADirectoryError):
        return []


@dataclass
class _Found:
    name: str
    uri: str
    num_frames: int | None  # image count of a frame folder; None for a video file


def _videos_in(fs, root_uri: str, path: str, *, depth: int = 2, skip_gt: bool = False) -> list[_Found]:
    """Frame folders and video files directly in ``path``, else one level further down."""
    found, subfolders = [], []
    for entry in _ls(fs, path):
        name = _name(entry["name"])
        if name.startswith((".", "_")):
            continue
        if entry.get("type") == "directory":
            if skip_gt and name.lower().endswith("_gt"):
                continue
            images = [
                e for e in _ls(fs, entry["name"]) if e.get("type") != "directory" and is_image_name(e["name"])
            ]
            if images:
                found.append(_Found(name, _uri(root_uri, entry["name"]), len(images)))
            else:
                subfolders.append(entry["name"])
        elif name.lower().endswith(VIDEO_FILE_EXTENSIONS):
            found.append(_Found(posixpath.splitext(name)[0], _uri(root_uri, entry["name"]), None))
    if found or depth <= 1:
        return found
    for sub in subfolders:
        found.extend(_videos_in(fs, root_uri, sub, depth=depth - 1, skip_gt=skip_gt))
    return found


def _child(fs, path: str, names: Sequence[str]) -> str | None:
    """The first child folder whose lower-cased name is in ``names`` (in that order of preference)."""
    children = {_name(e["name"]).lower(): e["name"] for e in _ls(fs, path) if e.get("type") == "directory"}
    for name in names:
        if name in children:
            return children[name]
    return None


def _find(fs, path: str, names: Sequence[str], *, depth: int = 3) -> str | None:
    """First path (breadth first, up to ``depth`` levels) whose lower-cased name is one of ``names``."""
    level = [path]
    wanted = [n.lower() for n in names]
    for _ in range(depth):
        following = []
        for folder in level:
            entries = _ls(fs, folder)
            by_name = {_name(e["name"]).lower(): e["name"] for e in entries}
            for name in wanted:
                if name in by_name:
                    return by_name[name]
            following.extend(e["name"] for e in entries if e.get("type") == "directory")
        level = following
    return None


def _stem_key(stem: str) -> str:
    """Names that label one video: ``01``, ``1``, ``1_label``, ``01_gt`` -> ``1``; others unchanged."""
    stem = re.sub(r"(?i)_(label|gt|mask)$", "", stem)
    return str(int(stem)) if stem.isdigit() else stem


def _per_video_files(fs, root_uri: str, folder: str, suffixes: Sequence[str]) -> dict[str, str]:
    """``{stem key: URI}`` of the files with one of ``suffixes`` in ``folder``."""
    out = {}
    for entry in _ls(fs, folder):
        name = _name(entry["name"])
        lower = name.lower()
        suffix = next((s for s in suffixes if lower.endswith(s)), None)
        if suffix is None or name.startswith("."):
            continue
        out[_stem_key(name[: -len(suffix)])] = _uri(root_uri, entry["name"])
    return out


# ---------------------------------------------------------------------------------------- the truth


@dataclass
class DatasetVideo:
    """One video of a data set and what the store records about it."""

    video_id: str
    uri: str
    dataset: str
    source_split: str  # "train" | "test": the data set's own folder
    name: str
    num_frames: int | None = None
    intervals: list[tuple[int, int]] = field(default_factory=list)
    mask_uri: str | None = None
    split: str = ""

    def __post_init__(self) -> None:
        self.split = self.split or self.source_split

    @property
    def label(self) -> int:
        return 1 if self.intervals else 0


@dataclass
class DatasetTruth:
    """Videos and ground truth of one or more frame-folder data sets; ``describe`` like ``GroundTruth``."""

    videos: dict[str, DatasetVideo] = field(default_factory=dict)
    fps: float | None = None  # the recording's frame rate where the data set states one

    @property
    def names(self) -> list[str]:
        return sorted({v.dataset for v in self.videos.values()})

    def video_uris(self) -> dict[str, str]:
        """``{video id: URI}``: what the extractor is given."""
        return {vid: video.uri for vid, video in sorted(self.videos.items())}

    def describe(self, video_id: str) -> dict:
        video = self.videos.get(video_id)
        if video is None:
            raise AnomalyError(video_id, f"not a video of the data set(s) {', '.join(self.names)}")
        return {
            "split": video.split,
            "label": video.label,
            "anomaly_class": ANOMALY_CLASS if video.label else "Normal",
            "anomaly_intervals": [list(iv) for iv in video.intervals],
            "num_frames": video.num_frames,
            "dataset": video.dataset,
            "mask_uri": video.mask_uri,
        }

    def merged(self, other: DatasetTruth) -> DatasetTruth:
        clash = sorted(set(self.videos) & set(other.videos))
        if clash:
            raise AnomalyError(clash[0], f"{len(clash)} video ids appear in two data sets")
        return DatasetTruth({**self.videos, **other.videos}, fps=self.fps or other.fps)

    def with_train_list(self, uri: str) -> DatasetTruth:
        """The videos named in the list file are the training split, every other video is test."""
        text = uris.read_bytes(uri).decode("utf-8", errors="replace")
        entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        entries = [e for e in entries if e]
        if not entries:
            raise AnomalyError(uri, "train list is empty")
        by_name: dict[str, list[str]] = {}
        for vid, video in self.videos.items():
            by_name.setdefault(video.name, []).append(vid)
            by_name.setdefault(f"{video.source_split}/{video.name}", []).append(vid)
        chosen: set[str] = set()
        unknown, ambiguous = [], []
        for entry in entries:
            key = entry if entry in by_name else posixpath.splitext(_name(entry))[0]  # a path: its stem
            if entry in self.videos:
                chosen.add(entry)
            elif len(by_name.get(key, [])) == 1:
                chosen.add(by_name[key][0])
            elif key in by_name:
                ambiguous.append(entry)
            else:
                unknown.append(entry)
        if ambiguous:
            raise AnomalyError(
                uri,
                f"{len(ambiguous)} names match several videos (e.g. {ambiguous[0]!r}); use ids or train/NAME",
            )
        if unknown:
            raise AnomalyError(
                uri, f"{len(unknown)} entries name no video of the data set (e.g. {unknown[0]!r})"
            )
        videos = {
            vid: replace(video, split="train" if vid in chosen else "test")
            for vid, video in self.videos.items()
        }
        return DatasetTruth(videos, fps=self.fps)

    def summary(self) -> str:
        parts = []
        for name in self.names:
            videos = [v for v in self.videos.values() if v.dataset == name]
            counts = {
                (split, label): sum(1 for v in videos if v.split == split and v.label == label)
                for split in ("train", "test")
                for label in (0, 1)
            }
            masks = sum(1 for v in videos if v.mask_uri)
            parts.append(
                f"{name}: train {counts['train', 0]} normal + {counts['train', 1]} anomalous, "
                f"test {counts['test', 0]} normal + {counts['test', 1]} anomalous, {masks} with pixel masks"
            )
        return "; ".join(parts)


# ------------------------------------------------------------------------------------ the loaders


def _split_folders(fs, path: str, root_uri: str) -> tuple[str, str]:
    train = _child(fs, path, TRAIN_FOLDERS)
    test = _child(fs, path, TEST_FOLDERS)
    if test is None:
        raise AnomalyError(
            root_uri, f"no testing folder ({', '.join(TEST_FOLDERS)}, any case) in the data set folder"
        )
    return train, test


def _make_videos(dataset: str, source_split: str, found: list[_Found], where: str) -> dict[str, DatasetVideo]:
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
    arrays = _per_video_files(lfs, labels_uri, lpath, (".npy",))
    masks = _per_video_files(lfs, labels_uri, lpath, (".mat",))
    if not arrays and not masks:
        raise AnomalyError(labels_uri, "no per-video .npy or _label.mat files in the folder")
    missing = [v.name for v in test if _stem_key(v.name) not in arrays and _stem_key(v.name) not in masks]
    _refuse_missing(missing, labels_uri, dataset)
    for video in test:
        key = _stem_key(video.name)
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
    extra = sorted((set(arrays) | set(masks)) - {_stem_key(v.name) for v in test})
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
        sources.update(_per_video_files(mfs, masks_uri, mpath, (".npy", ".mat")))
        for entry in _ls(mfs, mpath):
            if entry.get("type") == "directory":
                sources[_stem_key(_name(entry["name"]))] = _uri(masks_uri, entry["name"])
    for video in test:
        key = _stem_key(video.name)
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
        raise AnomalyError(
            "--dataset", f"unknown data set {kind!r}; choose one of: {', '.join(DATASET_KINDS)}"
        )
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
    name = _name(path).lower()
    for hint, kind in ((r"ucsd|ped\d", "ucsd"), ("shanghai", "shanghaitech"), ("avenue", "avenue")):
        if re.search(hint, name):
            return kind
    test = _child(fs, path, TEST_FOLDERS)
    if _find(fs, path, ["ucsdped1", "ucsdped2"], depth=1) or (
        test and any(e["name"].lower().endswith(".m") for e in _ls(fs, test))
    ):
        return "ucsd"
    if _find(fs, path, ["testing_label_mask", "frame_labels_avenue.npy", "avenue.mat"]):
        return "avenue"
    if _find(fs, path, ["test_frame_mask", "frame_labels_shanghai.npy", "shanghaitech.mat"]):
        return "shanghaitech"
    raise AnomalyError(
        root, "cannot tell the data set from its layout; pass --dataset ucsd|avenue|shanghaitech"
    )


def _ucsd_name(folder: str) -> str:
    match = re.search(r"(?i)ped\s*(\d+)", folder)
    return f"ucsd_ped{match.group(1)}" if match else "ucsd"


def _load_ucsd(fs, root: str, path: str, labels: str | None, masks: str | None) -> DatasetTruth:
    """``UCSDpedN/{Train,Test}/…`` with ``Test/UCSDpedN.m``; a folder of several UCSDpedN sets reads each."""
    if _child(fs, path, TEST_FOLDERS) is None:
        sets = [
            e["name"]
            for e in _ls(fs, path)
            if e.get("type") == "directory" and _child(fs, e["name"], TEST_FOLDERS)
        ]
        if not sets:
            raise AnomalyError(
                root, "no UCSD set here (expected Train/ and Test/, or UCSDped1/ and UCSDped2/)"
            )
        if labels or masks:
            raise AnomalyError("--labels", "give one UCSDpedN folder when overriding --labels or --masks")
        truth = DatasetTruth(fps=DEFAULT_FPS["ucsd"])
        for sub in sets:
            truth = truth.merged(_load_ucsd(fs, _uri(root, sub), sub, None, None))
        return truth
    dataset = _ucsd_name(_name(path))
    train, test = _split_folders(fs, path, root)
    videos = _make_videos(dataset, "train", _videos_in(fs, root, train, skip_gt=True) if train else [], root)
    test_videos = _make_videos(dataset, "test", _videos_in(fs, root, test, skip_gt=True), root)
    if labels is None:
        m_files = [e["name"] for e in _ls(fs, test) + _ls(fs, path) if e["name"].lower().endswith(".m")]
        preferred = [m for m in m_files if _ucsd_name(_name(m)) == dataset] or m_files
        if not preferred:
            raise AnomalyError(root, "no UCSD ground-truth .m file (e.g. Test/UCSDped2.m); pass --labels")
        labels = _uri(root, preferred[0])
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
    videos = _make_videos(kind, "train", _videos_in(fs, root, train) if train else [], root)
    test_videos = _make_videos(kind, "test", _videos_in(fs, root, test), root)
    if not test_videos:
        raise AnomalyError(_uri(root, test), "no test videos (frame folders or video files)")
    if labels is None:
        found = _find(fs, path, _LABEL_SEARCH[kind], depth=3)
        if found is None:
            raise AnomalyError(
                root, f"no {kind} ground truth found ({', '.join(_LABEL_SEARCH[kind])}); pass --labels"
            )
        labels = _uri(root, found)
    tests = list(test_videos.values())
    _assign_labels(kind, tests, labels)
    if masks is None:
        found = _find(fs, path, _MASK_SEARCH[kind], depth=3)
        masks = _uri(root, found) if found else None
    if masks is not None and masks.rstrip("/") != labels.rstrip("/"):
        _attach_masks(tests, masks, beside=False)
    videos.update(test_videos)
    return DatasetTruth(videos, fps=DEFAULT_FPS[kind])


__all__ = [
    "DATASET_KINDS",
    "DatasetTruth",
    "DatasetVideo",
    "detect_kind",
    "intervals_from_labels",
    "load_dataset",
    "merge_intervals",
    "parse_ucsd_m",
    "read_label_array",
    "read_mat_intervals",
    "read_vol_label",
]
