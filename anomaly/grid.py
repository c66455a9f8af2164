"""The cells of a frame: one geometry for grid features (extraction) and region metrics (evaluation).

Grid features (``extract --grid G``): every clip is also resized to ``(G*h, G*w)``
and cut into ``G x G`` tiles of the backbone's ``h x w`` input (:func:`tile_clip`);
each tile goes through the backbone like a whole clip and is pooled into 32
segments like the full-frame features, giving the store's optional
``features_grid`` column ``(G*G, 32, D)``, cells in row-major order. Cell
``(i, j)`` covers rows ``bounds_h[i]:bounds_h[i+1]`` and columns
``bounds_w[j]:bounds_w[j+1]`` of the frame, with ``bounds = round(linspace(0,
size, G+1))`` (:func:`cell_bounds`) at any resolution, so a cell maps onto a
pixel mask of any size. The standard ``features`` column stays the full-frame
features, so training and the frame-level protocol are unchanged; the trained
scorer is applied to each cell's features as it is to a whole frame's.
"""

from __future__ import annotations

import math
import re

import numpy as np

from anomaly.errors import SettingError

MAX_GRID = 8


def parse_grid(text: str | int | None) -> int:
    """``"2x2"``, ``"3"`` or ``3`` -> 3; ``None``/``"1"``/``"1x1"``/``"none"`` -> 1 (no grid)."""
    if text is None:
        return 1
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        raw = str(text).strip().lower()
        if raw in ("", "none", "off"):
            return 1
        match = re.fullmatch(r"(\d+)(?:\s*x\s*(\d+))?", raw)
        if not match or (match.group(2) and match.group(2) != match.group(1)):
            raise SettingError("grid", text, "expected GxG with equal sides (e.g. 2x2, 3x3)")
        value = int(match.group(1))
    if not 1 <= value <= MAX_GRID:
        raise SettingError("grid", text, f"must be between 1x1 and {MAX_GRID}x{MAX_GRID}")
    return value


def grid_of(cells: int) -> int:
    """Grid side from a cell count (``9`` -> 3)."""
    side = int(round(math.sqrt(cells)))
    if side * side != cells:
        raise ValueError(f"{cells} cells do not form a square grid")
    return side


def cell_bounds(height: int, width: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column boundaries (``grid + 1`` each) of the cells of a ``height x width`` frame."""
    rows = np.round(np.linspace(0, height, grid + 1)).astype(np.int64)
    cols = np.round(np.linspace(0, width, grid + 1)).astype(np.int64)
    return rows, cols


def tile_clip(frames: np.ndarray, grid: int) -> np.ndarray:
    """``(T, G*h, G*w, C)`` -> ``(G*G, T, h, w, C)``: the cells of a clip, row-major."""
    t, height, width, channels = frames.shape
    if height % grid or width % grid:
        raise ValueError(f"a {height}x{width} clip does not split into {grid}x{grid} equal tiles")
    h, w = height // grid, width // grid
    tiles = frames.reshape(t, grid, h, grid, w, channels).transpose(1, 3, 0, 2, 4, 5)
    return np.ascontiguousarray(tiles.reshape(grid * grid, t, h, w, channels))
