"""Where an image lies on the ground: its pixel grid and CRS, read from GeoTIFF tags (no GDAL).

The transform maps pixel corners to CRS coordinates as GDAL's geotransform does: pixel
``(col, row)`` (0, 0 = the top-left corner of the top-left pixel) lies at
``x = c + a * col + b * row``, ``y = f + d * col + e * row``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PIXEL_SCALE_TAG = 33550
TIEPOINT_TAG = 33922
TRANSFORMATION_TAG = 34264
GEOKEY_DIRECTORY_TAG = 34735
#: GeoKeys read: the raster type (1 PixelIsArea, 2 PixelIsPoint), geographic and projected CRS codes.
RASTER_TYPE_KEY, GEOGRAPHIC_TYPE_KEY, PROJECTED_TYPE_KEY = 1025, 2048, 3072
USER_DEFINED = 32767


@dataclass(frozen=True)
class Grid:
    """An image's pixel grid.

    Attributes:
        height: rows, pixels.
        width: columns, pixels.
        transform: (a, b, c, d, e, f) as in the module docstring, CRS units; None without GeoTIFF tags.
        epsg: the EPSG code of the CRS (projected, else geographic); None when the file names none.
    """

    height: int
    width: int
    transform: tuple[float, float, float, float, float, float] | None = None
    epsg: int | None = None

    def same_as(self, other: Grid, tolerance: float = 1e-9) -> bool:
        """Whether both grids have the same size, CRS and transform (to ``tolerance`` of a pixel)."""
        if (self.height, self.width, self.epsg) != (other.height, other.width, other.epsg):
            return False
        if self.transform is None or other.transform is None:
            return self.transform is None and other.transform is None
        scale = max(abs(self.transform[0]), abs(self.transform[4]), 1e-300)
        return bool(np.allclose(self.transform, other.transform, rtol=0, atol=tolerance * scale))

    def bounds(self, boxes: np.ndarray) -> np.ndarray:
        """float64 (N, 4) ``(left, bottom, right, top)`` in CRS units of int (N, 4) pixel boxes
        ``(xmin, ymin, xmax, ymax)``; NaN where the grid has no transform."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if self.transform is None:
            return np.full(boxes.shape, np.nan)
        a, b, c, d, e, f = self.transform
        cols = boxes[:, [0, 2, 0, 2]]
        rows = boxes[:, [1, 1, 3, 3]]
        xs = c + a * cols + b * rows
        ys = f + d * cols + e * rows
        return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)


def _values(tags: Any, code: int) -> tuple | None:
    tag = tags.get(code)
    if tag is None:
        return None
    value = tag.value
    return tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else (value,)


def geokeys(directory: tuple | None) -> dict[int, int]:
    """The short-valued GeoKeys of a GeoKeyDirectory tag (key -> value)."""
    keys: dict[int, int] = {}
    if not directory or len(directory) < 4:
        return keys
    count = int(directory[3])
    for i in range(count):
        entry = directory[4 + 4 * i : 8 + 4 * i]
        if len(entry) == 4 and int(entry[1]) == 0:  # location 0: the value is in the entry itself
            keys[int(entry[0])] = int(entry[3])
    return keys


def read_grid(page: Any) -> Grid:
    """The grid of a tifffile page (``TiffFile(path).pages.first``).

    Raises:
        ValueError: the GeoTIFF tags are present but do not make a transform (several tie points
            without a transformation matrix, a zero pixel scale).
    """
    tags = page.tags
    height, width = int(page.imagelength), int(page.imagewidth)
    keys = geokeys(_values(tags, GEOKEY_DIRECTORY_TAG))
    epsg = keys.get(PROJECTED_TYPE_KEY) or keys.get(GEOGRAPHIC_TYPE_KEY)
    epsg = epsg if epsg not in (None, 0, USER_DEFINED) else None
    matrix = _values(tags, TRANSFORMATION_TAG)
    scale = _values(tags, PIXEL_SCALE_TAG)
    tie = _values(tags, TIEPOINT_TAG)
    transform = None
    if matrix is not None and len(matrix) >= 8:
        m = [float(v) for v in matrix]
        transform = (m[0], m[1], m[3], m[4], m[5], m[7])
    elif scale is not None and tie is not None:
        if len(tie) != 6:
            raise ValueError(f"{len(tie) // 6} tie points and no transformation matrix: not an affine grid")
        sx, sy = float(scale[0]), float(scale[1])
        if sx == 0 or sy == 0:
            raise ValueError(f"pixel scale {sx} x {sy}: a grid needs non-zero pixel sizes")
        i, j, _, x, y, _ = (float(v) for v in tie)
        transform = (sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy)
    if transform is not None and keys.get(RASTER_TYPE_KEY) == 2:
        # PixelIsPoint: the coordinates name pixel centres; move them to the corners, as GDAL does
        a, b, c, d, e, f = transform
        transform = (a, b, c - 0.5 * (a + b), d, e, f - 0.5 * (d + e))
    return Grid(height, width, transform, int(epsg) if epsg is not None else None)
