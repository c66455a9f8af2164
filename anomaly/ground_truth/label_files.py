"""Ground-truth file formats of the frame-folder data sets: per-frame label arrays, UCSD ``.m``, ``.mat``.

Each reader turns one published format into 0-based ``[start, end)`` frame
intervals (or per-frame masks); which file a data set uses is decided by
:mod:`anomaly.ground_truth.loaders`. The formats are listed in the README
("Frame-folder data sets").
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence

import numpy as np

from anomaly import uris
from anomaly.errors import AnomalyError, first_line


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
    except Exception as exc:  # scipy raises many types for foreign or v7.3 files
        raise AnomalyError(uri, f"unreadable .mat file: {first_line(exc)}") from exc


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
