"""A batch's frames cut from the region tiles resident on the GPU by one CUDA kernel launch.

The default GPU cut (``regions.cut_frames``) queues, per region of the batch, two index uploads, a
gather and a scatter on CuPy: about 0.8 ms of host time per batch of 256 on an H200's host. Here the
host writes one table instead, a row per sample saying where its frames start and how they are laid
out (``frame_table``), and one launch copies every sample's rows (``cut_with_kernel``). The table is
plain pointer arithmetic over the tiles' arrays, so it is checked on the CPU against the host cut by
``copy_rows``, which copies host memory as the kernel copies device memory. Not the default yet: the
GPU check measures it against the CuPy cut.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from .regions import RegionTiles, TileLayout, import_cupy

#: Columns of a frame table: the address of the sample's first row of its first frame, the bytes
#: from one frame to the next and from one row to the next in its source, its rows, its bytes per row.
ADDRESS, FRAME_STRIDE, ROW_STRIDE, ROWS, ROW_BYTES = range(5)

_SOURCE = r"""
extern "C" __global__ void dalidw_cut(const long long* table, unsigned char* out, long long frames,
                                      long long out_slot, long long out_frame, long long out_row,
                                      long long max_rows, long long samples) {
    // a block per output row (slot, frame, row), its threads over the row's bytes
    long long rows = samples * frames * max_rows;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        long long row = r % max_rows;
        long long rest = r / max_rows;
        long long frame = rest % frames;
        long long slot = rest / frames;
        const long long* entry = table + 5 * slot;
        if (row >= entry[3]) continue;  // padding below the box
        const unsigned char* src = (const unsigned char*)entry[0] + frame * entry[1] + row * entry[2];
        unsigned char* dst = out + slot * out_slot + frame * out_frame + row * out_row;
        for (long long b = threadIdx.x; b < entry[4]; b += blockDim.x) dst[b] = src[b];
    }
}
"""
_KERNELS: dict[int, Any] = {}  # per GPU: the compiled kernel


def address(array: Any) -> int:
    """The address of the first element of a NumPy or CuPy array."""
    return int(array.ctypes.data) if isinstance(array, np.ndarray) else int(array.data.ptr)


def frame_table(layout: TileLayout, tiles: dict[int, RegionTiles], positions: np.ndarray, channels: int,
                itemsize: int) -> np.ndarray:
    """int64 (b, 5), the columns named above: for slot i, where the T frames of the tile at table
    ``positions[i]`` lie in ``tiles`` (region -> its tiles, every region of the batch, C-contiguous
    arrays of ``channels`` channels of ``itemsize`` bytes): a row of its block, or its box in its stack."""
    positions = np.asarray(positions, dtype=np.int64)
    table = np.empty((len(positions), 5), dtype=np.int64)
    sizes = layout.sizes[positions]
    table[:, ROWS] = sizes[:, 0]
    table[:, ROW_BYTES] = sizes[:, 1] * channels * itemsize
    regions, groups, rows = layout.regions[positions], layout.group[positions], layout.row[positions]
    for region in np.unique(regions).tolist():
        mine = regions == region
        kept = tiles[region]
        if kept.blocks is None:  # the box within the region's stack (T, H, W, C)
            _check_readable(kept.stack, region, channels, itemsize)
            boxes = layout.boxes[positions[mine]]
            _locate(table, mine, kept.stack, boxes[:, 1] * kept.stack.strides[1] + boxes[:, 0] * kept.stack.strides[2])
            continue
        for group in np.unique(groups[mine]).tolist():  # a row of the group's block (n, T, h, w, C)
            these = mine & (groups == group)
            block = kept.blocks[group]
            _check_readable(block, region, channels, itemsize)
            _locate(table, these, block, rows[these] * block.strides[0])
    return table


def _locate(table: np.ndarray, slots: np.ndarray, array: Any, offsets: np.ndarray) -> None:
    """Table rows ``slots`` (a mask): their frames start ``offsets`` bytes into ``array``, whose last
    four axes are (T, rows, columns, C), and step by its strides."""
    table[slots, ADDRESS] = address(array) + offsets
    table[slots, FRAME_STRIDE] = array.strides[-4]
    table[slots, ROW_STRIDE] = array.strides[-3]


def _check_readable(array: Any, region: int, channels: int, itemsize: int) -> None:
    """Raise ValueError unless the table's addresses and strides describe ``array``: C-contiguous,
    ``channels`` channels of ``itemsize`` bytes."""
    if not array.flags.c_contiguous or array.shape[-1] != channels or array.itemsize != itemsize:
        raise ValueError(f"the tiles of region {region} are not C-contiguous arrays of {channels} "
                         f"channels of {itemsize} bytes")


def copy_rows(table: np.ndarray, out: np.ndarray) -> np.ndarray:
    """What the kernel does, on host memory: ``out`` (b, T, H, W, C), C-contiguous, gets each slot's
    rows from the addresses of ``table``; its padding is left as it is. For checking tables."""
    frames = out.shape[1]
    slot_bytes, frame_bytes, row_bytes = out.strides[:3]
    base = address(out)
    for slot, (start, frame_stride, row_stride, rows, length) in enumerate(table.tolist()):
        for frame in range(frames):
            for row in range(rows):
                ctypes.memmove(base + slot * slot_bytes + frame * frame_bytes + row * row_bytes,
                               start + frame * frame_stride + row * row_stride, length)
    return out


def cut_with_kernel(layout: TileLayout, tiles: dict[int, RegionTiles], positions: np.ndarray, out: Any) -> Any:
    """``out`` (b, T, H, W, C), a C-contiguous CuPy array, filled on the current CUDA stream with the
    frames of the tiles at table ``positions`` from ``tiles`` (CuPy arrays on ``out``'s GPU), in one
    launch; the padding beyond each box is left as it is. The work is queued, not waited for."""
    cp = import_cupy()
    if not out.flags.c_contiguous:
        raise ValueError("the frames buffer must be C-contiguous")
    samples, frames, max_rows, _, channels = out.shape
    table = cp.asarray(frame_table(layout, tiles, positions, channels, out.itemsize))
    kernel = _KERNELS.get(out.device.id)
    if kernel is None:
        kernel = _KERNELS[out.device.id] = cp.RawKernel(_SOURCE, "dalidw_cut")
    slot_bytes, frame_bytes, row_bytes = out.strides[:3]
    blocks = int(min(max(1, samples * frames * max_rows), 65535))
    args = (table, out, *(np.int64(v) for v in (frames, slot_bytes, frame_bytes, row_bytes, max_rows, samples)))
    kernel((blocks,), (128,), args)
    return out
