"""Training input: the store is read by Ray's tasks, never loaded by the driver.

The driver reads only the small columns (``video_id``, ``label``) of the train split to carve a
stratified validation split and count bags. The features are read by a few plain Ray tasks
(:func:`read_groups`), each reading its part files once: a store whose bags fit in a quarter of
Ray's object store comes back as abnormal, normal and validation blocks held there, with the
normalisation moments of their part files; a larger store gets only its statistics, one part
file in memory per task, and streams through ``ray.data.read_parquet`` every epoch, in a new
file order. A k-fold cross-validation (:func:`prepare_folds`) gets every fold from the same one
read. Either way the driver's memory does not grow with the store, and a training worker holds a
bounded window of bags (its shuffle window and a small reservoir), whatever the store's size.
Several workers get the datasets as Ray Train shards (``ray.train.get_dataset_shard``); one
worker reads them directly (:func:`local_datasets`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
from ray.data import FileShuffleConfig
from ray.data.expressions import Expr, col

from anomaly import store as feature_store
from anomaly import uris
from anomaly.config import TrainConfig
from anomaly.crops import CROPS_COLUMN, expand_crop_bags
from anomaly.errors import AnomalyError
from anomaly.normalization import floor_std, normalization_space
from anomaly.segments import NUM_SEGMENTS

logger = logging.getLogger(__name__)

TRAIN_SETS = ("abnormal", "normal")  # the datasets Ray Train splits across its workers
VAL_SET = "val"  # given to Ray Train unsplit: each worker scores every world-th validation video
VAL_COLUMNS = ["video_id", "label", "features", "num_frames", "anomaly_intervals", "anomaly_class"]
# CPUs of each Ray Data read task. Fractional so that reads still run beside training workers
# on a small machine; on a cluster the CPU workers' cores are what reads use.
READ_CPUS = float(os.environ.get("ANOMALY_READ_CPUS", "0.25"))
SHUFFLE_BUFFER_BAGS = int(os.environ.get("ANOMALY_SHUFFLE_BUFFER_BAGS", "256"))
# Training bags that take at most this share of the cluster's object store are read once and
# kept there; larger stores stream from Parquet every epoch (bounded memory, more reading).
CACHE_FRACTION = float(os.environ.get("ANOMALY_CACHE_FRACTION", "0.25"))
CACHE_TASK_BYTES = 128 * 1024**2  # bags each task of the cache's read holds (read_groups)


@dataclass(frozen=True)
class TrainingInputs:
    """What the driver knows about the training data: small, whatever the store's size.

    Shared by every Tune trial (the split and statistics are made once from the base config).
    ``cached`` holds the training bags in Ray's object store (see :data:`CACHE_FRACTION`), or is
    None when they stream from the store every epoch.
    """

    store: str
    files: tuple[str, ...]  # the store's part files (scheme-less paths)
    val_ids: tuple[str, ...]
    num_abnormal: int  # training bags (the validation split excluded)
    num_normal: int
    mean: np.ndarray
    std: np.ndarray
    store_metadata: dict  # StoreMetadata.to_dict() of the store, copied into every checkpoint
    seed: int = 0
    cached: dict | None = None  # "abnormal" / "normal" / "val" -> Arrow blocks in Ray's object store
    crops: int = 1  # crops per video read as bags of their own (config crops "bags" on a ten-crop store)

    @property
    def feature_dim(self) -> int:
        return int(self.mean.shape[-1])

    def steps_per_epoch(self, config: TrainConfig) -> int:
        """Optimizer steps per epoch: one pass over the abnormal bags in global batches.

        The config's ``batch_size`` is the global number of bags of each label per step, so
        this does not depend on how many DDP workers share the batch.
        """
        return max(1, math.ceil(self.num_abnormal / config.batch_size))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``fraction`` of each label to val, at least one of each where possible."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = min(max(1, round(fraction * len(idx))), len(idx) - 1) if len(idx) > 1 and fraction > 0 else 0
        val_idx.extend(idx[:n_val])
        train_idx.extend(idx[n_val:])
    return np.sort(np.array(train_idx, dtype=np.int64)), np.sort(np.array(val_idx, dtype=np.int64))


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint index sets covering every video, each label spread evenly over them."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        for k in range(folds):
            parts[k].extend(idx[k::folds])
    return [np.sort(np.array(part, dtype=np.int64)) for part in parts]


def train_labels(store: str) -> tuple[list[str], np.ndarray]:
    """The train split's video ids and labels, sorted by id (so a seed alone decides any split)."""
    table = feature_store.read_table(store, columns=["label"], split="train")
    table = table.sort_by([("video_id", "ascending"), ("label", "ascending")])
    return table.column("video_id").to_pylist(), table.column("label").to_numpy().astype(np.int64)


FILTER_COLUMNS = ["video_id", "split", "label"]


def read_rows(
    inputs: TrainingInputs, columns: list[str], where: Expr, *, shuffle: FileShuffleConfig | None = None
) -> ray.data.Dataset:
    """The store's rows matching ``where`` as a lazy Ray dataset (read by Ray's tasks)."""
    filesystem, _ = uris.pyarrow_filesystem(inputs.store)
    read = list(dict.fromkeys([*columns, *FILTER_COLUMNS]))
    # Ray Data's V1 Parquet read: V2 reads footers in actors that are not replaced when their node
    # is lost (its ListFiles task then fails the whole fit; checked with a worker node removed
    # mid-run in tests/test_multinode.py), while V1's read tasks are retried elsewhere.
    context = ray.data.DataContext.get_current()
    v2, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        dataset = ray.data.read_parquet(
            list(inputs.files), filesystem=filesystem, columns=read, num_cpus=READ_CPUS, shuffle=shuffle
        )
    finally:
        context.use_datasource_v2 = v2
    return dataset.filter(expr=where, num_cpus=READ_CPUS).select_columns(columns)


def _train_rows(inputs: TrainingInputs, label: int | None = None) -> Expr:
    where = col("split") == "train"
    if inputs.val_ids:  # Arrow refuses not_in([])
        where = where & col("video_id").not_in(list(inputs.val_ids))
    return where if label is None else where & (col("label") == label)


def read_bags(
    inputs: TrainingInputs, where: Expr, *, shuffle: FileShuffleConfig | None = None
) -> ray.data.Dataset:
    """Training bags (a ``features`` column): each crop a bag of its own when ``inputs.crops > 1``."""
    if inputs.crops == 1:
        return read_rows(inputs, ["features"], where, shuffle=shuffle)
    rows = read_rows(inputs, [CROPS_COLUMN], where, shuffle=shuffle)
    return rows.map_batches(expand_crop_bags, batch_format="pyarrow", num_cpus=READ_CPUS)


def _stream(inputs: TrainingInputs) -> dict[str, ray.data.Dataset]:
    """The three datasets read from the store (every execution reads it again, in a new file order)."""
    shuffle = FileShuffleConfig(seed=inputs.seed)  # reseeded for every execution: a new order each epoch
    sets = {
        name: read_bags(inputs, _train_rows(inputs, label), shuffle=shuffle)
        for name, label in (("abnormal", 1), ("normal", 0))
    }
    # No validation videos (val_fraction 0): an always-false filter (Arrow refuses is_in([])).
    val_rows = col("video_id").is_in(list(inputs.val_ids)) if inputs.val_ids else col("split") == "\0none"
    val_columns = VAL_COLUMNS + ([CROPS_COLUMN] if inputs.crops > 1 else [])  # crop scores are averaged
    sets["val"] = read_rows(inputs, val_columns, val_rows)
    return sets


def train_datasets(inputs: TrainingInputs) -> dict[str, ray.data.Dataset]:
    """Abnormal and normal training bags: two datasets, so every step can draw both labels."""
    if inputs.cached is not None:
        # Seeded: the same seed and store give the same block order, hence the same batches.
        return {
            name: ray.data.from_arrow_refs(inputs.cached[name]).randomize_block_order(seed=inputs.seed)
            for name in TRAIN_SETS
        }
    return {name: ds for name, ds in _stream(inputs).items() if name in TRAIN_SETS}


def val_dataset(inputs: TrainingInputs) -> ray.data.Dataset:
    if inputs.cached is not None:
        return ray.data.from_arrow_refs(inputs.cached[VAL_SET])
    return _stream(inputs)[VAL_SET]


class CachedShard:
    """A cached dataset read straight from its blocks in Ray's object store, in a seeded block order.

    What a one-worker fit iterates in place of a Ray Train shard (``iter_batches`` of the same
    shape): no Ray Data execution to start each epoch, and nothing to split.
    """

    def __init__(self, blocks: list, seed: int | None = None) -> None:
        self.blocks = list(blocks)
        if seed is not None:
            order = np.random.default_rng(seed).permutation(len(self.blocks))
            self.blocks = [self.blocks[i] for i in order]

    def iter_batches(self, *, batch_size: int, batch_format: str = "pyarrow", prefetch_batches: int = 0):
        assert batch_format == "pyarrow", batch_format
        for block in self.blocks:
            table = ray.get(block)
            for start in range(0, table.num_rows, batch_size):
                yield table.slice(start, batch_size)


def local_datasets(inputs: TrainingInputs) -> dict:
    """The training and validation sets of a one-worker fit: cached blocks, or Ray Data streams."""
    if inputs.cached is not None:
        return {
            **{name: CachedShard(inputs.cached[name], seed=inputs.seed) for name in TRAIN_SETS},
            VAL_SET: CachedShard(inputs.cached[VAL_SET]),
        }
    return _stream(inputs)


def _fits_object_store(bag_bytes: int) -> bool:
    return bag_bytes <= CACHE_FRACTION * ray.cluster_resources().get("object_store_memory", 0)


def _moments(batch: pa.Table, kind: str = "standardize") -> dict[str, np.ndarray]:
    """Count, mean and sum of squared deviations of one batch's segment features (float64),
    in the space normalisation ``kind`` standardises (L2-normalised rows for ``robust``)."""
    segments = feature_store.features_from_arrow(batch.column("features")).astype(np.float64)
    segments = normalization_space(segments.reshape(-1, segments.shape[-1]), kind)
    mean = segments.mean(axis=0)
    return {
        "count": np.array([len(segments)]),
        "mean": mean[None],
        "m2": ((segments - mean) ** 2).sum(axis=0)[None],
    }


def _read_table(
    store: str, paths: list[str], crops: int, *, with_val: bool
) -> tuple[pa.Table, str, list[str]]:
    """Part files' rows with the columns a cache or statistics task needs; the bag column and the
    validation columns."""
    import pyarrow.parquet as pq

    filesystem, _ = uris.pyarrow_filesystem(store)
    bag_column = "features" if crops == 1 else CROPS_COLUMN
    val_columns = VAL_COLUMNS + ([CROPS_COLUMN] if crops > 1 else [])
    columns = list(dict.fromkeys([*FILTER_COLUMNS, bag_column, *(val_columns if with_val else [])]))
    tables = [pq.read_table(path, columns=columns, filesystem=filesystem) for path in paths]
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    return table, bag_column, val_columns


def _members(table: pa.Table, groups: list[list[str] | None], j: int) -> pa.Array:
    """Which rows belong to group ``j``: its video ids, or (``None``) every video in no listed group,
    so a split's large side never travels to the tasks as a list of ids."""
    import pyarrow.compute as pc

    if groups[j] is not None:
        return pc.is_in(table.column("video_id"), value_set=pa.array(groups[j], type=pa.string()))
    listed = [vid for group in groups if group is not None for vid in group]
    return pc.invert(pc.is_in(table.column("video_id"), value_set=pa.array(listed, type=pa.string())))


def _group_rows(
    table: pa.Table, inside: pa.Array, bag_column: str, val_columns: list[str] | None
) -> tuple[pa.Table, pa.Table, pa.Table | None]:
    """The abnormal and normal training bags (each crop a bag when the store has crops) of the
    rows ``inside`` a group and (``val_columns``) those rows as validation rows."""
    import pyarrow.compute as pc

    train = pc.and_(inside, pc.equal(table.column("split"), "train"))
    abnormal, normal = (
        expand_crop_bags(
            table.filter(pc.and_(train, pc.equal(table.column("label"), label))).select([bag_column])
        )
        for label in (1, 0)
    )
    return abnormal, normal, table.filter(inside).select(val_columns) if val_columns else None


def _read_groups_part(
    store: str, files: list[str], groups: list[list[str] | None], crops: int, kind: str, train: set, val: set
) -> tuple:
    """One read task of a cache: for each group of videos, its abnormal and normal bags (groups in
    ``train``), its validation rows (groups in ``val``) and the moments of its bags; 4 values per
    group (None where not asked), each part file read once."""
    table, bag_column, val_columns = _read_table(store, files, crops, with_val=bool(val))
    out: list = []
    for j in range(len(groups)):
        if j not in train and j not in val:
            out += [None] * 4
            continue
        inside = _members(table, groups, j)
        abnormal, normal, rows = _group_rows(table, inside, bag_column, val_columns if j in val else None)
        if j in train:
            out += [
                abnormal,
                normal,
                rows,
                [_moments(part, kind) for part in (abnormal, normal) if part.num_rows],
            ]
        else:
            out += [None, None, rows, None]
    return tuple(out)


def _group_moments_part(
    store: str, files: list[str], groups: list[list[str] | None], crops: int, kind: str, train: set
) -> list[list[dict]]:
    """One statistics task over a store too large to cache: the bag moments of each group in
    ``train``, one part file in memory at a time."""
    moments: list[list[dict]] = [[] for _ in groups]
    for path in files:
        table, bag_column, _ = _read_table(store, [path], crops, with_val=False)
        for j in sorted(train):
            abnormal, normal, _ = _group_rows(table, _members(table, groups, j), bag_column, None)
            moments[j].extend(_moments(part, kind) for part in (abnormal, normal) if part.num_rows)
    return moments


def _moment_parts(batches) -> list[tuple[int, np.ndarray, np.ndarray]]:
    return [(int(m["count"][0]), m["mean"][0], m["m2"][0]) for moments in batches for m in moments]


def _merge_moments(
    parts: list[tuple[int, np.ndarray, np.ndarray]], kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std from each part's (count, mean, m2): Chan et al.'s pairwise update.

    Merged in an order fixed by content, not by which part finished first: float sums depend on
    their order, and one seed must give one model.
    """
    parts = sorted(parts, key=lambda part: (part[0], part[1].tobytes(), part[2].tobytes()))
    count, mean, m2 = 0, None, None
    for n_b, mean_b, m2_b in parts:
        if mean is None:
            count, mean, m2 = n_b, mean_b, m2_b
            continue
        delta = mean_b - mean
        total = count + n_b
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta**2 * (count * n_b / total)
        count = total
    if mean is None:
        raise ValueError("no training segments")
    return floor_std(mean, np.sqrt(m2 / count), kind)


def read_groups(
    inputs: TrainingInputs,
    groups: list[list[str] | None],
    held: list[int],
    kind: str,
    *,
    cache: bool,
    bag_bytes: int,
) -> list[tuple[dict | None, np.ndarray, np.ndarray]]:
    """``(cached, mean, std)`` of each split "validate on group j, train on every other group", for
    j in ``held``, from ONE read of the store by a few plain Ray tasks.

    A group is a list of video ids, or ``None``: the train videos in no listed group. One split
    (``prepare_inputs``) is groups ``[validation videos, None]`` with ``held=[0]``; a
    k-fold cross-validation (``prepare_folds``) is the k folds, all held. Each task returns its
    files' bags, validation rows and moments per group, so a split's statistics merge the moments
    of its training groups and its cached blocks are theirs: the object store holds a video's bags
    once and its validation rows once, however many splits share them. Plain tasks rather than
    Ray Data: a store small enough to cache is read in about a second, where starting Ray Data
    executions costs a fit 10 s or more on a small machine; the driver holds only references and
    two D-vectors per task and group. ``cache`` False: only the statistics, one part file in memory
    per task at a time (the bags then stream through Ray Data every epoch).
    """
    train = {i for i in range(len(groups)) for j in held if i != j}
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    if cache:
        tasks = max(1, min(len(inputs.files), cpus, math.ceil(bag_bytes / CACHE_TASK_BYTES)))
        read = ray.remote(_read_groups_part).options(num_cpus=READ_CPUS, num_returns=4 * len(groups))
        refs = [
            read.remote(
                inputs.store, list(inputs.files[i::tasks]), groups, inputs.crops, kind, train, set(held)
            )
            for i in range(tasks)
        ]
        moments = {i: ray.get([ref[4 * i + 3] for ref in refs]) for i in sorted(train)}
    else:
        tasks = max(1, min(len(inputs.files), cpus))
        task = ray.remote(_group_moments_part).options(num_cpus=READ_CPUS)
        per_task = ray.get(
            [
                task.remote(inputs.store, list(inputs.files[i::tasks]), groups, inputs.crops, kind, train)
                for i in range(tasks)
            ]
        )
        moments = {i: [part[i] for part in per_task] for i in sorted(train)}
    out = []
    for j in held:
        others = [i for i in range(len(groups)) if i != j]
        mean, std = _merge_moments(_moment_parts([m for i in others for m in moments[i]]), kind)
        cached = None
        if cache:
            cached = {
                name: [ref[4 * i + slot] for i in others for ref in refs]
                for slot, name in enumerate(TRAIN_SETS)
            }
            cached[VAL_SET] = [ref[4 * j + 2] for ref in refs]
        out.append((cached, mean, std))
    return out


def _checked_train_labels(store: str) -> tuple[list[str], np.ndarray]:
    """The train split's ids and labels, refused when training could not run on them."""
    ids, labels = train_labels(store)
    if not ids:
        raise AnomalyError(store, "feature store has no 'train' videos")
    counts = np.bincount(labels, minlength=2)
    if counts[0] < 2 or counts[1] < 2:
        raise AnomalyError(
            store,
            f"training needs at least 2 normal and 2 anomalous train videos, found {counts[0]} normal "
            f"and {counts[1]} anomalous",
        )
    if len(set(ids)) != len(ids):
        # The rows are read by Ray's tasks, which cannot tell which copy is the first.
        logger.warning("%s: duplicate video rows are trained on as often as they occur", store)
    return ids, labels


def _store_inputs(store: str, config: TrainConfig) -> TrainingInputs:
    """What the driver knows of the store before any split: its part files, metadata and crops."""
    meta = feature_store.read_metadata(store)
    return TrainingInputs(
        store=store,
        files=tuple(sorted(feature_store.part_files(store))),
        val_ids=(),
        num_abnormal=0,
        num_normal=0,
        mean=np.zeros(0, dtype=np.float32),
        std=np.zeros(0, dtype=np.float32),
        store_metadata=meta.to_dict() if meta is not None else {},
        seed=config.seed,
        crops=(meta.crops or 1) if meta is not None and config.crops == "bags" else 1,
    )


def _with_validation(
    inputs: TrainingInputs, ids: list[str], labels: np.ndarray, val_idx: np.ndarray
) -> TrainingInputs:
    """``inputs`` split: the videos ``val_idx`` held out for validation, the rest counted as bags."""
    train = np.ones(len(ids), dtype=bool)
    train[val_idx] = False
    return dataclasses.replace(
        inputs,
        val_ids=tuple(ids[i] for i in val_idx),
        num_abnormal=int((labels[train] == 1).sum()) * inputs.crops,
        num_normal=int((labels[train] == 0).sum()) * inputs.crops,
    )


def _log_inputs(inputs: TrainingInputs, cached: dict | None) -> None:
    logger.info(
        "training bags: %d abnormal, %d normal, %d for validation; %s",
        inputs.num_abnormal,
        inputs.num_normal,
        len(inputs.val_ids),
        "held in Ray's object store" if cached else "streamed from the store every epoch",
    )


def prepare_inputs(
    store: str, config: TrainConfig, *, cache: bool | None = None, val_ids: list[str] | None = None
) -> TrainingInputs:
    """Split ids, bag counts and normalisation statistics; the features never reach the driver.

    ``cache``: hold the bags in Ray's object store (True), stream them every epoch (False), or
    decide by size (None: cached when they take at most :data:`CACHE_FRACTION` of it).
    ``val_ids``: the validation videos instead of ``config.val_fraction``'s.
    """
    ids, labels = _checked_train_labels(store)
    if val_ids is None:
        _, val_idx = stratified_split(labels, config.val_fraction, config.seed)
    else:
        held = set(val_ids)
        val_idx = np.array([i for i, vid in enumerate(ids) if vid in held], dtype=np.int64)
    inputs = _with_validation(_store_inputs(store, config), ids, labels, val_idx)
    store_dim = inputs.store_metadata.get("feature_dim")
    bytes_per_dim = len(labels) * inputs.crops * NUM_SEGMENTS * 4  # float32 bags, a bag per crop
    bag_bytes = bytes_per_dim * int(store_dim or 0)
    if cache is None and store_dim:
        cache = _fits_object_store(bag_bytes)
    groups = [list(inputs.val_ids), None]  # validate on the validation videos, train on the rest

    def read(cache: bool, bag_bytes: int) -> tuple[dict | None, np.ndarray, np.ndarray]:
        try:
            return read_groups(inputs, groups, [0], config.feature_norm, cache=cache, bag_bytes=bag_bytes)[0]
        except (ValueError, pa.ArrowInvalid) as exc:  # rows of different shapes
            raise AnomalyError(store, f"features: {exc}") from exc

    # Small enough: read once into Ray's object store (spilled to disk under pressure), so epochs
    # and Tune trials do not read and decode the Parquet files again.
    cached, mean, std = read(bool(cache), bag_bytes)
    if cache is None and _fits_object_store(bytes_per_dim * len(mean)):
        # A store without a recorded width: decided now that the width is known.
        cached, _, _ = read(True, bytes_per_dim * len(mean))
    _log_inputs(inputs, cached)
    return dataclasses.replace(inputs, mean=mean, std=std, cached=cached)


def prepare_folds(store: str, config: TrainConfig, folds: int) -> tuple[TrainingInputs, ...]:
    """The inputs of a ``folds``-fold cross-validation on the train split's labels (stratified,
    seeded by ``config.seed``), from one read of the store (:func:`read_groups`): fold j validates
    on its videos, trains on the others, with statistics of its own training part."""
    ids, labels = _checked_train_labels(store)
    parts = stratified_folds(labels, folds, config.seed)
    base = _store_inputs(store, config)
    splits = [_with_validation(base, ids, labels, part) for part in parts]
    store_dim = base.store_metadata.get("feature_dim")
    bag_bytes = len(labels) * base.crops * NUM_SEGMENTS * 4 * int(store_dim or 0)
    cache = bool(store_dim) and _fits_object_store(2 * bag_bytes)  # training and validation copies
    groups = [list(inputs.val_ids) for inputs in splits]
    try:
        read = read_groups(
            base, groups, list(range(folds)), config.feature_norm, cache=cache, bag_bytes=bag_bytes
        )
    except (ValueError, pa.ArrowInvalid) as exc:  # rows of different shapes
        raise AnomalyError(store, f"features: {exc}") from exc
    logger.info(
        "%d-fold cross-validation on the %d training videos' labels, the store read once; %s",
        folds,
        len(ids),
        "held in Ray's object store" if cache else "streamed from the store every epoch",
    )
    return tuple(
        dataclasses.replace(inputs, mean=mean, std=std, cached=cached)
        for inputs, (cached, mean, std) in zip(splits, read, strict=True)
    )


def rank_batch(global_batch: int, world: int, rank: int) -> int:
    """This rank's share of the global batch (shares differ by at most one bag, sum = global)."""
    return global_batch // world + (1 if rank < global_batch % world else 0)


class BagStream:
    """One label's bags from this worker's shard, ``size`` at a time, in a fresh order each epoch.

    Bags stream from the shard in record batches into a shuffle window of ``SHUFFLE_BUFFER_BAGS``
    (numpy arrays; Arrow's own shuffle of nested lists is far slower) and leave it at random.
    Ray Train gives every worker an equal share of rows, and the last step may need more bags
    than the share holds: then bags seen earlier this epoch are drawn again at random from a
    bounded reservoir. So each epoch reads the shard once and the worker holds at most the
    window, one record batch and the reservoir.
    """

    def __init__(self, shard, size: int, seed: int, reservoir: int = 64) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.buffer = max(SHUFFLE_BUFFER_BAGS, size)
        self.capacity = max(reservoir, 2 * size)
        self.reservoir: list[np.ndarray] = []
        self.seen = 0
        self.window: list[np.ndarray] = []
        self.batches: Iterator | None = iter(
            shard.iter_batches(batch_size=max(size, 64), batch_format="pyarrow", prefetch_batches=2)
        )

    def _keep(self, bag: np.ndarray) -> None:
        self.seen += 1
        if len(self.reservoir) < self.capacity:
            self.reservoir.append(bag)
        else:
            slot = int(self.rng.integers(self.seen))
            if slot < self.capacity:
                self.reservoir[slot] = bag

    def _fill(self) -> None:
        while len(self.window) < self.buffer and self.batches is not None:
            try:
                batch = next(self.batches)
            except StopIteration:
                self.batches = None
                break
            if batch.num_rows:
                self.window.extend(feature_store.features_from_arrow(batch.column("features")))

    def take(self) -> np.ndarray:
        """(size, 32, D) float32 bags."""
        out: list[np.ndarray] = []
        while len(out) < self.size:
            self._fill()
            if not self.window:
                break
            i = int(self.rng.integers(len(self.window)))
            self.window[i], self.window[-1] = self.window[-1], self.window[i]
            bag = self.window.pop()
            self._keep(bag)
            out.append(bag)
        if len(out) < self.size:
            if not self.reservoir:
                raise RuntimeError("this worker's shard of training bags is empty")
            extra = self.rng.integers(len(self.reservoir), size=self.size - len(out))
            out.extend(self.reservoir[i] for i in extra)
        return np.stack(out).astype(np.float32, copy=False)
