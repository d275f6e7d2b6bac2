"""The tiles table from region exports: a grid of tiles per region, their targets, where they lie
on the ground, which tiles to skip for nodata, and a split that does not leak.

Reads ``image_dir/{label}/{region}.tif`` (the layout the loader reads) one region at a time and
writes the loader's long format: one row per tile and label.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError, OptionError, shown
from .files import replaced
from .geo import Grid, read_grid
from .index import key_text, unsafe_name
from .options import check_size, is_number
from .split import SPLITS, near_radius, parse_fractions, parse_split, split_tiles
from .targets import TargetSpec, region_targets, target_problem
from .validate import ImageInfo, read_header


def column_names(specs: Sequence[TargetSpec]) -> list[str]:
    """Each target's column: its own name, else "target" for the first unnamed one, else its spec text.

    Raises:
        ValueError: two targets with one name, or a name the table uses for something else.
    """
    names: list[str] = []
    for spec in specs:
        if spec.name:
            names.append(spec.name)
        elif "target" not in names and not any(s.name == "target" for s in specs):
            names.append("target")
        else:
            names.append(spec.text)
    taken = set(FIXED_COLUMNS) | set(GEO_COLUMNS) | {"split"}
    clash = [n for n in names if n in taken]
    if clash or len(set(names)) != len(names):
        raise OptionError(f"Expected distinct target names other than {sorted(taken)}. Received: {names}")
    return names


FIXED_COLUMNS = ("tile_id", "region_id", "label_id", "region_coordinates")
#: Bounds of each tile in its image's CRS (rasterio's order) and the CRS's EPSG code.
GEO_COLUMNS = ("left", "bottom", "right", "top", "epsg")


@dataclass
class TileReport:
    """What building the table did.

    Attributes:
        regions: regions read.
        labels: the labels, in frame order.
        grid_tiles: tiles on the regions' grids.
        nodata_skipped: tiles skipped for a nodata share above ``max_nodata``.
        buffer_dropped: tiles dropped as the buffer between blocks of different splits.
        splits: tiles per split ("train", "val", "test"), when split.
    """

    regions: int = 0
    labels: list = field(default_factory=list)
    grid_tiles: int = 0
    nodata_skipped: int = 0
    buffer_dropped: int = 0
    splits: dict[str, int] = field(default_factory=dict)

    @property
    def tiles(self) -> int:
        """Tiles in the table."""
        return self.grid_tiles - self.nodata_skipped - self.buffer_dropped


def _sort_key(text: str) -> tuple:
    return (0, int(text), text) if text.lstrip("-").isdigit() else (1, 0, text)


def _as_value(text: str) -> Any:
    """A folder or file name as a table value: an int where the int prints back as the same text."""
    return int(text) if text.lstrip("-").isdigit() and str(int(text)) == text else text


def find_labels(image_dir: str) -> list[Any]:
    """The label folders of ``image_dir``, numbers in numeric order.

    Raises:
        DataError: ``image_dir`` is not a folder or has no sub-folders.
    """
    if not os.path.isdir(image_dir):
        raise DataError([f"{image_dir} is not a folder"], context="no images to cut tiles from")
    names = sorted((e.name for e in os.scandir(image_dir) if e.is_dir() and not e.name.startswith(".")),
                   key=_sort_key)
    if not names:
        raise DataError([f"{image_dir} has no label folders ({image_dir}/LABEL/REGION.tif)"],
                        context="no images to cut tiles from")
    return [_as_value(n) for n in names]


def find_regions(image_dir: str, labels: Sequence[Any], extension: str, what: str) -> list[str]:
    """The region ids with an image in every label folder, in order.

    Raises:
        DataError: listing each region without an image for some label, or no region at all.
    """
    present: dict[str, set[str]] = {}
    for label in labels:
        folder = os.path.join(image_dir, key_text(label))
        if not os.path.isdir(folder):
            raise DataError([f"{folder} is not a folder"], context=f"a label has no {what} folder")
        for entry in os.scandir(folder):
            if entry.name.endswith(extension) and entry.is_file():
                present.setdefault(entry.name[: -len(extension)], set()).add(key_text(label))
    regions = sorted(present, key=_sort_key)
    if not regions:
        raise DataError([f"no {what} named {image_dir}/LABEL/REGION{extension}"], context=f"no {what} found")
    wanted = [key_text(label) for label in labels]
    problems = [f"region {r}: no {what} for label(s) {', '.join(w for w in wanted if w not in present[r])}"
                for r in regions if len(present[r]) < len(wanted)]
    problems += [f"region {shown(r)} {why}" for r in regions if (why := unsafe_name(r))]
    if problems:
        raise DataError(problems, context=f"some regions lack {what}")
    return regions


@dataclass(frozen=True)
class _Region:
    """The headers of one region's images: inputs and target images per label."""

    region: str
    inputs: list[str]
    targets: list[str]
    input_infos: list[ImageInfo]
    target_infos: list[ImageInfo]
    grid: Grid


def _read(path: str) -> tuple[ImageInfo, Grid]:
    import tifffile

    info = read_header(path)
    with tifffile.TiffFile(path) as tif:
        grid = read_grid(tif.pages.first)
    return info, grid


def _check_region(region: str, inputs: list[str], targets: list[str], specs: Sequence[TargetSpec],
                  tile: tuple[int, int], problems: list[str]) -> _Region | None:
    """Read a region's headers; add what is wrong with them to ``problems``."""
    infos, grids, target_infos = [], [], []
    for path in dict.fromkeys(inputs + targets):
        try:
            info, grid = _read(path)
        except ValueError as err:
            problems.append(f"{path}: {err}")
            return None
        if problem := info.size_problem(path):
            problems.append(problem)
            return None
        if path in inputs:
            infos.append(info)
            grids.append((path, grid))
        if path in targets:
            target_infos.append(info)
            if path not in inputs:
                grids.append((path, grid))
    # the region's grid: its first georeferenced image's; images without GeoTIFF tags need its size only
    first_path, first = next(((p, g) for p, g in grids if g.transform is not None), grids[0])
    odd = [p for p, g in grids if not (g.same_as(first) if g.transform is not None
                                       else (g.height, g.width) == (first.height, first.width))]
    if odd:
        problems.append(f"region {region}: {odd[0]} is on another grid than {first_path} ({_grid_text(grids, odd[0])} "
                        f"vs {_grid_text(grids, first_path)}); all labels of a region must share one grid")
        return None
    if tile[0] > first.height or tile[1] > first.width:
        problems.append(f"region {region}: the tile {tile[0]}x{tile[1]} is larger than its {first.height}x"
                        f"{first.width} image")
        return None
    for spec in specs:
        for path, info in zip(dict.fromkeys(targets), target_infos):
            why = target_problem(spec, info)
            if why:
                problems.append(f"{path}: {why}")
                return None
    return _Region(region, inputs, targets, infos, target_infos, first)


def _grid_text(grids: list[tuple[str, Grid]], path: str) -> str:
    grid = dict(grids)[path]
    return f"{grid.height}x{grid.width}, EPSG {grid.epsg}, transform {grid.transform}"


def build_tiles(image_dir: str | os.PathLike, tile: tuple[int, int], **options: Any) -> tuple[pd.DataFrame, TileReport]:
    """The tiles table of the images in ``image_dir``, in memory: (table, report); the options are
    those of :func:`plan_tiles`, which says what the table holds."""
    plan = plan_tiles(image_dir, tile, **options)
    return plan.table(), plan.report


def write_tiles(
    image_dir: str | os.PathLike,
    tile: tuple[int, int],
    path: str | os.PathLike,
    **options: Any,
) -> TileReport:
    """The tiles table written straight to the CSV ``path``, region by region, so that the whole
    table is never in memory; written whole or not at all (a temporary file, then a rename).

    Args:
        image_dir, tile, options: as for :func:`plan_tiles`.
        path: the CSV file to write.

    Returns:
        the report.

    Raises:
        as :func:`plan_tiles`, and OSError where the folder of ``path`` cannot be written.
    """
    plan = plan_tiles(image_dir, tile, **options)
    with replaced(path) as temporary, open(temporary, "w", newline="") as out:
        for number, chunk in enumerate(plan.chunks()):
            chunk.to_csv(out, index=False, header=number == 0)
    return plan.report


@dataclass
class TilePlan:
    """Every tile kept, its targets, bounds and split, held per region: what the table is made of."""

    parts: list[dict]
    regions: list[str]
    labels: list[Any]
    names: list[str]
    split_of: np.ndarray | None
    report: TileReport

    def table(self) -> pd.DataFrame:
        """The whole table."""
        return _long_table(self.parts, self.regions, self.labels, self.names, self.split_of,
                           geo=self.georeferenced)

    def chunks(self) -> Iterator[pd.DataFrame]:
        """The table region by region (same columns in each)."""
        start = 0
        for part in self.parts:
            end = start + len(part["tile_id"])
            split_of = self.split_of[start:end] if self.split_of is not None else None
            yield _long_table([part], self.regions, self.labels, self.names, split_of, geo=self.georeferenced)
            start = end

    @property
    def georeferenced(self) -> bool:
        """Whether any region has GeoTIFF tags (the table then has the bound columns)."""
        return any(p["georeferenced"] for p in self.parts)


def plan_tiles(
    image_dir: str | os.PathLike,
    tile: tuple[int, int],
    *,
    stride: tuple[int, int] | None = None,
    targets: Sequence[str | TargetSpec] = (),
    target_dir: str | os.PathLike | None = None,
    labels: Sequence[Any] | None = None,
    extension: str = ".tif",
    nodata: float | None = None,
    max_nodata: float = 0.0,
    split: str | None = None,
    fractions: str | Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    progress: bool = False,
) -> TilePlan:
    """Plan the tiles table of the images in ``image_dir/{label}/{region}{extension}``: read every
    header, then one region at a time its images, and keep each tile's targets, bounds and split.

    Args:
        image_dir: the loader's image folder.
        tile: (height, width) of each tile, pixels.
        stride: (rows, cols) between tiles, pixels; default the tile size. Tiles lie fully inside the image.
        targets: target specs (see :class:`TargetSpec`); none for a table without targets (``"last-image"``).
        target_dir: where the images the targets are computed from lie (same layout), e.g. class maps
            beside RGB inputs; default ``image_dir``.
        labels: the labels in frame order; default every folder of ``image_dir``, in numeric order.
        nodata: a sample value that marks invalid pixels, besides NaN and each file's GDAL_NODATA tag.
        max_nodata: tiles whose share of invalid pixels (in any label's input or target image) exceeds
            this are skipped; 0 skips a tile with a single invalid pixel.
        split: None, "region", "blocks:N" or "random" (see :mod:`dalidw.split`); adds a ``split`` column.
        fractions: (train, val[, test]) shares of regions, blocks or tiles.
        seed: the split follows from it.

    Returns:
        the plan: ``.table()`` the whole table, ``.chunks()`` region by region, ``.report``.
        Columns: tile_id, region_id, label_id, the target columns, region_coordinates
        "(xmin, ymin, xmax, ymax)", then left, bottom, right, top, epsg where the images are
        georeferenced, then split.

    Raises:
        DataError: missing labels or images, mismatched grids, a tile larger than an image, targets
            that cannot be computed, or no tile left; every problem found is listed.
        OptionError: an option out of range.
    """
    image_dir = os.fspath(image_dir)
    tile = check_size(tile, "tile", one_int=True)
    stride = tile if stride is None else check_size(stride, "stride", one_int=True)
    specs = [s if isinstance(s, TargetSpec) else TargetSpec.parse(s) for s in targets]
    names = column_names(specs)
    if not (is_number(max_nodata) and 0 <= max_nodata <= 1):
        raise OptionError(f"Expected `max_nodata` to be a share in [0, 1]. Received: max_nodata={max_nodata!r}")
    if nodata is not None and not is_number(nodata):
        raise OptionError(f"Expected `nodata` to be a number. Received: nodata={nodata!r}")
    kind, block = parse_split(split) if split is not None else ("", 0)
    shares = parse_fractions(fractions)
    labels = list(labels) if labels is not None else find_labels(image_dir)
    if not labels:
        raise OptionError("Expected at least one label")
    regions = find_regions(image_dir, labels, extension, "images")
    source_dir = os.fspath(target_dir) if target_dir is not None else image_dir
    if target_dir is not None:
        missing = sorted(set(regions) - set(find_regions(source_dir, labels, extension, "target images")),
                         key=_sort_key)
        if missing:
            raise DataError([f"region {r}: no target images in {source_dir}" for r in missing],
                            context="some regions lack target images")

    def paths(folder: str, region: str) -> list[str]:
        return [os.path.join(folder, key_text(label), region + extension) for label in labels]

    problems: list[str] = []
    # without targets the "target images" are the inputs: read for nodata only, where they may hold it
    checked = [_check_region(r, paths(image_dir, r), paths(source_dir if specs else image_dir, r), specs, tile,
                             problems) for r in regions]
    if problems:
        raise DataError(problems, context="the images cannot be cut into tiles")

    from tqdm.auto import tqdm

    report = TileReport(regions=len(regions), labels=labels)
    parts = []
    next_id = 0
    for number, reg in enumerate(tqdm(checked, desc="dalidw: tiles", unit="region", disable=not progress,
                                      leave=False)):
        shape = ((reg.grid.height - tile[0]) // stride[0] + 1, (reg.grid.width - tile[1]) // stride[1] + 1)
        values, worst = region_targets(reg.inputs, reg.targets, reg.input_infos, reg.target_infos, specs,
                                       tile, stride, shape, nodata)
        values = values.reshape(len(labels), len(specs), shape[0] * shape[1])
        rows, cols = np.indices(shape).reshape(2, -1)
        keep = (worst.reshape(-1) <= max_nodata) & np.isfinite(values).all(axis=(0, 1))
        report.grid_tiles += rows.size
        report.nodata_skipped += int((~keep).sum())
        boxes = np.stack([cols * stride[1], rows * stride[0], cols * stride[1] + tile[1], rows * stride[0] + tile[0]],
                         axis=1)
        parts.append({
            "tile_id": np.arange(next_id, next_id + rows.size)[keep], "region": np.full(keep.sum(), number),
            "row": rows[keep], "col": cols[keep], "boxes": boxes[keep],
            "values": values[:, :, keep],
            "bounds": reg.grid.bounds(boxes[keep]), "epsg": reg.grid.epsg,
            "georeferenced": reg.grid.transform is not None,
        })
        next_id += rows.size

    tile_ids = np.concatenate([p["tile_id"] for p in parts])
    if tile_ids.size == 0:
        raise DataError([f"all {report.grid_tiles} tiles of {len(regions)} region(s) hold more than "
                         f"{max_nodata:g} nodata (--max-nodata)"], context="no tile left")
    region_no = np.concatenate([p["region"] for p in parts])
    split_of = None
    if kind:
        radius = (near_radius(tile[0], stride[0]), near_radius(tile[1], stride[1]))
        split_of = split_tiles(kind, block, region_no, np.concatenate([p["row"] for p in parts]),
                               np.concatenate([p["col"] for p in parts]), radius, shares, seed)
        report.buffer_dropped = int((split_of == "").sum())
        report.splits = {s: int((split_of == s).sum()) for s in SPLITS if (split_of == s).any()}
    return TilePlan(parts, regions, labels, names, split_of, report)


def _long_table(parts: list[dict], regions: list[str], labels: list[Any], names: list[str],
                split_of: np.ndarray | None, *, geo: bool) -> pd.DataFrame:
    """One row per tile and label, tiles in grid order, labels in frame order; tiles whose split is ""
    (the buffer between blocks of different splits) are left out."""
    kept = split_of != "" if split_of is not None else slice(None)
    n_labels = len(labels)
    tile_ids = np.concatenate([p["tile_id"] for p in parts])[kept]
    region_no = np.concatenate([p["region"] for p in parts])[kept]
    boxes = np.concatenate([p["boxes"] for p in parts])[kept]
    values = np.concatenate([p["values"] for p in parts], axis=2)[:, :, kept]  # (T, k, N)
    columns: dict[str, Any] = {
        "tile_id": np.repeat(tile_ids, n_labels),
        "region_id": _repeated([_as_value(r) for r in regions], np.repeat(region_no, n_labels)),
        "label_id": _repeated(labels, np.tile(np.arange(n_labels), tile_ids.size)),
    }
    for k, name in enumerate(names):
        columns[name] = values[:, k, :].T.reshape(-1)
    unique_boxes, box_code = np.unique(boxes.reshape(-1, 4), axis=0, return_inverse=True)
    texts = [f"({x0}, {y0}, {x1}, {y1})" for x0, y0, x1, y1 in unique_boxes.tolist()]
    columns["region_coordinates"] = pd.Categorical.from_codes(np.repeat(box_code.reshape(-1), n_labels), texts)
    if geo:
        bounds = np.concatenate([p["bounds"] for p in parts])[kept]
        for j, name in enumerate(GEO_COLUMNS[:4]):
            columns[name] = np.repeat(bounds[:, j], n_labels)
        epsg = np.concatenate([np.full(len(p["tile_id"]), p["epsg"] or 0) for p in parts])[kept]
        columns["epsg"] = pd.array(np.repeat(epsg, n_labels), dtype="Int64")
        columns["epsg"][columns["epsg"] == 0] = pd.NA
    if split_of is not None:
        columns["split"] = pd.Categorical(np.repeat(split_of[kept], n_labels), categories=list(SPLITS))
    return pd.DataFrame(columns)


def _repeated(values: Sequence[Any], codes: np.ndarray) -> Any:
    """``values[codes]`` as a column: int64 where every value is an int, else categorical (held once)."""
    if all(isinstance(v, int) for v in values):
        return np.asarray(values, dtype=np.int64)[codes]
    return pd.Categorical.from_codes(codes, pd.Index(list(values), dtype=object))


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``table`` as CSV to ``path`` whole or not at all (a temporary file, then a rename).

    Raises:
        OSError: the folder of ``path`` does not exist or cannot be written.
    """
    with replaced(path) as temporary, open(temporary, "w", newline="") as out:
        table.to_csv(out, index=False)
