"""anomaly.grid (cells of a frame), anomaly.regions (the region criterion) and the cell heat map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomaly.errors import SettingError
from anomaly.grid import cell_bounds, parse_grid, tile_clip
from anomaly.plots import heatmap_plot
from anomaly.regions import (
    cell_pixel_counts,
    covered_share,
    frame_detected,
    frame_region_scores,
    region_summary,
)


def test_region_criterion_hand_built_4x4():
    """A 4x4 frame, 2x2 grid (cells of 2x2 pixels): 3 anomalous pixels top-left, 1 top-right."""
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[0, 1] = mask[1, 0] = True  # cell 0
    mask[1, 3] = True  # cell 1
    assert cell_pixel_counts(mask, 2).tolist() == [3, 1, 0, 0]
    top_left = [0.9, 0.2, 0.1, 0.1]
    top_right = [0.2, 0.9, 0.1, 0.1]
    assert covered_share(top_left, mask, 0.5) == 0.75 and frame_detected(top_left, mask)
    assert covered_share(top_right, mask, 0.5) == 0.25 and not frame_detected(top_right, mask)
    assert frame_detected(top_right, mask, threshold=0.15)  # both top cells: all 4 pixels
    normal = np.zeros((4, 4), bool)
    assert frame_detected([0.6, 0, 0, 0], normal) and not frame_detected([0.4, 0, 0, 0], normal)
    # one number per frame: detected (or a false positive) exactly when threshold < score
    labels, scores = frame_region_scores(
        np.array([top_left, top_right, [0.6, 0.1, 0.3, 0.0]]),
        np.array([[3, 1, 0, 0], [3, 1, 0, 0], [0, 0, 0, 0]]),
    )
    assert labels.tolist() == [1, 1, 0] and scores.tolist() == [0.9, 0.2, 0.6]
    summary = region_summary(labels, scores, threshold=0.5)
    assert summary["detection_rate"] == 0.5 and summary["false_positive_rate"] == 1.0
    assert summary["auc"] == 0.5 and summary["anomalous_frames"] == 2


def test_coverage_boundary_is_inclusive():
    mask = np.zeros((10, 10), bool)
    mask[:2, :5] = True  # 10 pixels, all in cell 0 of a 2x2 grid ... move 6 of them to cell 1
    mask[:2, 5:8] = True
    mask[:2, :2] = False  # now cell 0 has 6, cell 1 has 6 -> 50 %
    counts = cell_pixel_counts(mask, 2)
    assert counts.tolist() == [6, 6, 0, 0]
    assert frame_detected([0.9, 0.1, 0.1, 0.1], mask)  # 50 % >= 40 %
    mask[:2, 2] = False  # cell 0: 4 of 10 -> exactly 40 %
    assert cell_pixel_counts(mask, 2).tolist() == [4, 6, 0, 0] and frame_detected([0.9, 0.1, 0.1, 0.1], mask)
    mask[0, 3] = False  # 3 of 9 -> 33 %
    assert not frame_detected([0.9, 0.1, 0.1, 0.1], mask)


def test_tiles_cover_the_cells_of_the_frame():
    clip = np.arange(2 * 6 * 9 * 1, dtype=np.int64).reshape(2, 6, 9, 1)
    tiles = tile_clip(clip, 3)
    rows, cols = cell_bounds(6, 9, 3)
    assert tiles.shape == (9, 2, 2, 3, 1)
    for k in range(9):
        i, j = divmod(k, 3)
        np.testing.assert_array_equal(tiles[k], clip[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1]])


def test_parse_grid():
    assert [parse_grid(v) for v in (None, "1x1", "2x2", "3", 3, "none")] == [1, 1, 2, 3, 3, 1]
    for bad in ("2x3", "x", "0", "12x12"):
        with pytest.raises(SettingError, match=f"^grid={bad!r}: "):
            parse_grid(bad)


def test_heatmap_png(tmp_path):
    frame = np.full((24, 32, 3), 90, np.uint8)
    mask = np.zeros((12, 16), bool)  # a mask at half the frame's resolution
    mask[:6, 8:] = True
    out = heatmap_plot(
        frame, np.array([0.1, 0.8, 0.3, 0.2]), str(tmp_path / "h" / "x.png"), title="x", mask=mask
    )
    assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
