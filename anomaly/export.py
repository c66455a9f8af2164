"""The feature store as the published per-video formats, so features extracted here drop into other projects' code.

Formats (one file per video, named after its id, under ``OUT``):

- ``sultani-txt``: ``<id>.txt``, 32 lines of D space-separated numbers, the
  layout of Sultani et al.'s C3D release and Dubey et al.'s ResNet-34 release
  (their loaders read 32 rows per video). Numbers are written with 9
  significant digits, enough for float32 to read back bit for bit (the
  releases round to 6 or 3 decimals); ten-crop stores write the crops' mean
  (``features``), as those formats have no crop axis.
- ``rtfm-npy``: ``<id>.npy``, float32 ``(T, crops, D)``, what RTFM's (and MGFN's,
  UR-DMU's) list files point at; ``crops`` is 1 for a one-crop store. Beside
  the files, ``rtfm-train.list`` and ``rtfm-test.list`` name them, anomalous
  videos first (RTFM's loader takes the first lines of its training list as the
  anomalous bags). ``level="segments"`` (default) writes the store's 32
  segments; ``level="clips"`` writes one row per clip from the clip table
  (raw backbone outputs, one per 16 frames by default: what RTFM's test-time
  frame alignment, ``np.repeat(scores, 16)``, expects), for extracted stores.
- ``npy``: ``<id>.npy``, float32 ``(32, D)`` (``features``), or ``(32, crops, D)`` for
  ten-crop stores.

Export then :func:`anomaly.importers.import_features` gives the same bags back
(segment level): 32 rows are kept as they are by the importer's one rule and
ten-crop files keep their crop axis.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import numpy as np

from anomaly import store as feature_store
from anomaly import uris
from anomaly.crops import CROPS_COLUMN, crop_bags_from_arrow
from anomaly.errors import AnomalyError

logger = logging.getLogger(__name__)

FORMATS = ("sultani-txt", "rtfm-npy", "npy")
LEVELS = ("segments", "clips")
TXT_FORMAT = "%.9g"  # float32 round-trips through 9 significant digits


@dataclass
class ExportReport:
    out: str
    written: list[str] = field(default_factory=list)  # video ids
    lists: list[str] = field(default_factory=list)  # list files written (rtfm-npy)

    def summary(self) -> str:
        extra = f" and {len(self.lists)} list files" if self.lists else ""
        return f"exported {len(self.written)} videos to {self.out}{extra}"


def _txt_bytes(rows: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savetxt(buffer, rows, fmt=TXT_FORMAT, delimiter=" ")
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    return buffer.getvalue()


def _clip_rows(store: str, video_id: str, crops: int) -> np.ndarray:
    """``(clips, crops, D)`` raw clip features of one video from the clip table."""
    table = feature_store.read_clips(store, [video_id])
    if table.num_rows == 0:
        raise AnomalyError(store, f"{video_id}: no clips in the clip table (an imported store has none)")
    values = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32).reshape(table.num_rows, crops, -1)


def export_features(
    store: str, out: str, fmt: str, *, level: str = "segments", split: str | None = None
) -> ExportReport:
    """Write every video of ``store`` (or of one ``split``) to ``out`` in ``fmt`` (see the module docstring)."""
    if fmt not in FORMATS:
        raise AnomalyError("format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if level not in LEVELS:
        raise AnomalyError("level", f"expected one of {', '.join(LEVELS)}, got {level!r}")
    if level == "clips" and fmt != "rtfm-npy":
        raise AnomalyError("level", "clip-level export is for format rtfm-npy; the others hold 32 segments")
    metadata = feature_store.read_metadata(store)
    crops = (metadata.crops or 1) if metadata else 1
    if level == "clips" and not feature_store.clip_files(store):
        raise AnomalyError(
            store,
            "no clip table (imported stores have only 32 segments, and extraction keeps clips only with "
            "keep_clips): use level segments",
        )
    columns = ["split", "label", "features", *([CROPS_COLUMN] if crops > 1 else [])]
    report = ExportReport(out=out)
    listed: dict[str, list[tuple[int, str, str]]] = {"train": [], "test": []}
    seen: set[str] = set()
    for batch in feature_store.iter_batches(store, columns, split=split):
        ids = batch.column("video_id").to_pylist()
        features = feature_store.features_from_arrow(batch.column("features"))
        per_crop = crop_bags_from_arrow(batch.column(CROPS_COLUMN)) if crops > 1 else features[:, None]
        for i, video_id in enumerate(ids):
            if video_id in seen:  # a duplicate row: the store's readers keep the first
                continue
            seen.add(video_id)
            if fmt == "sultani-txt":
                name, data = f"{video_id}.txt", _txt_bytes(features[i])
            elif fmt == "npy":
                name = f"{video_id}.npy"
                data = _npy_bytes(features[i] if crops == 1 else per_crop[i].transpose(1, 0, 2))
            else:
                rows = (
                    _clip_rows(store, video_id, crops) if level == "clips" else per_crop[i].transpose(1, 0, 2)
                )
                name, data = f"{video_id}.npy", _npy_bytes(rows)
            uri = uris.join(out, name)
            uris.write_bytes_atomic(uri, data)
            report.written.append(video_id)
            part = batch.column("split")[i].as_py()
            if part in listed:
                listed[part].append((-int(batch.column("label")[i].as_py()), video_id, uri))
    if fmt == "rtfm-npy":
        for part, entries in listed.items():
            if entries:
                uri = uris.join(out, f"rtfm-{part}.list")
                uris.write_bytes_atomic(uri, "".join(f"{e[2]}\n" for e in sorted(entries)).encode())
                report.lists.append(uri)
    if not report.written:
        raise AnomalyError(store, f"no videos{f' in split {split!r}' if split else ''} to export")
    logger.info("%s", report.summary())
    return report
