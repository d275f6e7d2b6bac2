"""The tiles table in: column checks, safe coordinate parsing, tile -> (region, box, target).

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels, half-open like numpy slicing:
the tile is ``image[ymin:ymax, xmin:xmax]``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError, OptionError, shown
from .options import is_number

LAST_IMAGE = "last-image"
#: Largest pixel coordinate accepted (2**31 - 1: no TIFF is wider or taller).
MAX_COORDINATE = 2**31 - 1
_INT_TOKEN = re.compile(r"^[+-]?\d+(\.0*)?$")


@dataclass(frozen=True)
class TileTable:
    """One row per tile, in the order the loader uses when it does not shuffle.

    Attributes:
        tile_ids: (N,) the ``tile_id`` values.
        region_ids: (N,) region ids as the strings used in image paths.
        boxes: int64 (N, 4) ``(xmin, ymin, xmax, ymax)`` in pixels.
        targets: float32 (N, k) regression targets, or None for ``"last-image"``.
        target_names: the k target column names (empty for ``"last-image"``).
    """

    tile_ids: np.ndarray
    region_ids: np.ndarray
    boxes: np.ndarray
    targets: np.ndarray | None
    target_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.tile_ids)

    @property
    def sizes(self) -> np.ndarray:
        """int64 (N, 2) ``(h, w)`` of every box, in pixels."""
        return self.boxes[:, [3, 2]] - self.boxes[:, [1, 0]]


def key_text(value: Any) -> str:
    """The text of a label or region id as it appears in a path (2016.0 -> "2016")."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def unsafe_name(region: str) -> str | None:
    """Why a region id cannot be a file name inside the image folder (a path, "..", empty), or None."""
    if region in ("", ".", ".."):
        return "is not a file name"
    if os.path.isabs(region) or "/" in region or "\\" in region:
        return "is a path, which would read outside image_dir"
    return None


def parse_box(value: Any) -> tuple[int, int, int, int]:
    """Parse ``"(xmin, ymin, xmax, ymax)"`` (or a tuple/list/array of 4) into ints, without eval.

    Raises:
        ValueError: with the reason, when the value is not four integral numbers.
    """
    if isinstance(value, str):
        text = value.strip()
        if len(text) >= 2 and (text[0], text[-1]) in {("(", ")"), ("[", "]")}:
            text = text[1:-1]
        tokens = [t.strip() for t in text.split(",")]
        if len(tokens) == 5 and tokens[-1] == "":
            tokens = tokens[:4]
        if len(tokens) != 4 or not all(_INT_TOKEN.match(t) for t in tokens):
            raise ValueError(f"expected '(xmin, ymin, xmax, ymax)' with 4 integers, got {shown(value)}")
        return tuple(int(float(t)) for t in tokens)  # type: ignore[return-value]
    if isinstance(value, (tuple, list, np.ndarray)):
        items = list(np.asarray(value, dtype=object).ravel()) if isinstance(value, np.ndarray) else list(value)
        if len(items) != 4:
            raise ValueError(f"expected 4 numbers (xmin, ymin, xmax, ymax), got {len(items)}: {shown(value)}")
        out = []
        for item in items:
            if not is_number(item):
                raise ValueError(f"expected 4 integers, got {shown(value)}")
            if not math.isfinite(float(item)) or not float(item).is_integer():
                raise ValueError(f"expected 4 integers, got {shown(value)}")
            out.append(int(item))
        return tuple(out)  # type: ignore[return-value]
    raise ValueError(f"expected a '(xmin, ymin, xmax, ymax)' string or a tuple of 4 integers, got {shown(value)}")


def splits_last(target: str | Sequence[str], labels: Sequence[object]) -> bool:
    """Whether ``target`` is "last-image" (x holds the first T-1 frames, y the last).

    Raises:
        ValueError: "last-image" with fewer than 2 labels.
    """
    split = isinstance(target, str) and target == LAST_IMAGE
    if split and len(labels) < 2:
        raise OptionError(f"target='{LAST_IMAGE}' needs at least 2 labels. Received: labels={list(labels)!r}")
    return split


def target_columns(target: str | Sequence[str]) -> tuple[str, ...]:
    """The target column names asked for: () for ``"last-image"``, else one or more names."""
    if isinstance(target, str):
        return () if target == LAST_IMAGE else (target,)
    names = tuple(target)
    if len(set(names)) != len(names):
        raise OptionError(f"Expected `target` to name each column once. Received: target={shown(target)}")
    if not names or not all(isinstance(n, str) for n in names):
        raise OptionError(
            "Expected `target` to be a column name, a non-empty list of column names or "
            f"'{LAST_IMAGE}'. Received: target={shown(target)}"
        )
    return names


def repeated_columns(data: pd.DataFrame, read: Sequence[str]) -> list[str]:
    """A problem line for each column in ``read`` that ``data`` has more than once, e.g. after a merge.

    Only the columns the loader reads are refused, as any of them would be ambiguous (which ``target``
    is y?); a repeated column it never reads (a merge's leftovers) changes no batch, so it may stay.
    """
    columns = list(data.columns)
    return [f"column {shown(name)} appears {columns.count(name)} times"
            for name in dict.fromkeys(read) if columns.count(name) > 1]


def build_table(
    data: pd.DataFrame,
    labels: Sequence[Any],
    target: str | Sequence[str] = "target",
    *,
    min_tile_size: int = 1,
) -> TileTable:
    """Check the tiles table and reduce it to one row per tile.

    With a ``label_id`` column (long format, one row per tile and label) the box and
    the target of each tile come from its row of the last label; without it, one row per tile.

    Raises:
        DataError: naming every column it reads that appears more than once; else listing every
            problem found (missing columns, bad coordinates, duplicate tiles, non-finite targets,
            tiles without a row for the last label).
    """
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"Expected `data` to be a pandas DataFrame. Received: {type(data).__name__}")
    names = target_columns(target)
    required = ["tile_id", "region_id", "region_coordinates", *names]
    repeated = repeated_columns(data, [*required, "label_id"])
    if repeated:
        raise DataError(repeated, context="the tiles table repeats columns the loader reads: keep one of each "
                                          "(rename or drop the others)")
    missing = [c for c in required if c not in data.columns]
    if missing:
        raise DataError(
            [f"missing column {shown(c)}" for c in missing] + [f"the columns are {list(data.columns)}"],
            context="the tiles table lacks required columns",
        )

    problems: list[str] = []
    rows = data
    if "label_id" in data.columns:
        last = key_text(labels[-1])
        label_keys = data["label_id"].map(key_text)
        rows = data[label_keys == last]
        if len(rows) == 0 and len(data) > 0:
            seen = sorted(set(label_keys))[:10]
            raise DataError(
                [f"no row has label_id == {shown(labels[-1])}; label_id values include {seen}"],
                context="the tiles table has no rows for the last label",
            )
        without_last = pd.Index(data["tile_id"].unique()).difference(pd.Index(rows["tile_id"].unique()))
        problems += [f"tile_id {shown(t)} has no row for the last label {shown(labels[-1])}" for t in without_last]
    if len(rows) == 0:
        raise DataError(["the tiles table has no rows"], context="the tiles table is empty")

    dup = rows["tile_id"][rows["tile_id"].duplicated()].unique()
    where = f"with label_id == {shown(labels[-1])}" if "label_id" in data.columns else "in the table"
    problems += [f"tile_id {shown(t)} appears more than once {where}" for t in dup]

    boxes = np.zeros((len(rows), 4), dtype=np.int64)
    for i, (row_name, tile, value) in enumerate(zip(rows.index, rows["tile_id"], rows["region_coordinates"])):
        try:
            box = parse_box(value)
        except ValueError as err:
            problems.append(f"row {shown(row_name)} (tile_id {shown(tile)}): bad region_coordinates: {err}")
            continue
        xmin, ymin, xmax, ymax = box
        if max(abs(v) for v in box) > MAX_COORDINATE:
            problems.append(f"row {shown(row_name)} (tile_id {shown(tile)}): box {box} has a coordinate beyond "
                            f"{MAX_COORDINATE} pixels")
            continue
        if xmax - xmin < min_tile_size or ymax - ymin < min_tile_size:
            problems.append(
                f"row {shown(row_name)} (tile_id {shown(tile)}): box {box} is {xmax - xmin}x{ymax - ymin} pixels "
                f"(width x height); at least {min_tile_size}x{min_tile_size} is needed"
            )
        elif xmin < 0 or ymin < 0:
            problems.append(f"row {shown(row_name)} (tile_id {shown(tile)}): box {box} starts at a negative pixel")
        boxes[i] = box

    targets = None
    if names:
        values = rows[list(names)]
        try:
            targets = values.to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            targets = values.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        with np.errstate(over="ignore"):
            single = targets.astype(np.float32)
        for i, j in zip(*np.nonzero(~np.isfinite(single))):
            what = "beyond float32's range" if np.isfinite(targets[i, j]) else "not a finite number"
            problems.append(
                f"row {shown(rows.index[i])} (tile_id {shown(rows['tile_id'].iloc[i])}): target {shown(names[j])} is "
                f"{shown(values.iloc[i, j])}, {what}"
            )
        targets = single

    region_ids = np.array([key_text(r) for r in rows["region_id"]], dtype=object)
    for region in dict.fromkeys(region_ids.tolist()):
        why = unsafe_name(region)
        if why:
            problems.append(f"region_id {shown(region)} {why}; region ids name files inside image_dir/<label>/")

    if problems:
        raise DataError(problems, context="the tiles table has problems")
    return TileTable(
        tile_ids=rows["tile_id"].to_numpy(),
        region_ids=region_ids,
        boxes=boxes,
        targets=targets,
        target_names=names,
    )
