"""The GPU cut kernel's frame table, checked on the CPU: copying host memory as the kernel copies
device memory gives the host cut's frames, for tiles kept as blocks of one size, of several sizes,
and as the region's stack."""

import numpy as np
import pytest

from dalidw.cut_kernel import copy_rows, frame_table
from dalidw.regions import RegionTiles, TileLayout, cut_frames


@pytest.fixture(params=["uint8", "uint16", "float32"])
def region_tiles(request):
    rng = np.random.default_rng(1)
    shapes = [(5, 300, 320, 3), (5, 300, 320, 3), (5, 90, 100, 3)]  # the last one too small for its blocks
    stacks = [rng.integers(0, 250, shape).astype(request.param) for shape in shapes]
    regions, boxes = [], []
    for region, n, sizes in ((0, 30, [(40, 45)]), (1, 20, [(40, 45), (30, 20), (7, 33)]), (2, 120, [(50, 60)])):
        for k in range(n):
            h, w = sizes[k % len(sizes)]
            y, x = int(rng.integers(0, 90 - h)), int(rng.integers(0, 100 - w))
            regions.append(region)
            boxes.append((x, y, x + w, y + h))
    layout = TileLayout.plan(np.array(regions), np.array(boxes), [s.shape for s in stacks], stacks[0].itemsize)
    assert layout.as_blocks == (True, True, False)
    return layout, {r: RegionTiles.from_stack(layout, r, stacks[r]) for r in range(3)}


@pytest.mark.parametrize("which", ["one size", "every region"])
def test_the_kernels_copies_give_the_host_cut(region_tiles, which):
    layout, tiles = region_tiles
    rng = np.random.default_rng(2)
    positions = np.arange(30) if which == "one size" else rng.permutation(len(layout.regions))[:64]
    h, w = layout.sizes[positions].max(axis=0)
    dtype = tiles[0].blocks[0].dtype
    expected = cut_frames(layout, tiles, positions, np.zeros((len(positions), 5, h, w, 3), dtype))
    out = np.full((len(positions), 5, h, w, 3), 7, dtype)
    table = frame_table(layout, tiles, positions, 3, out.itemsize)
    copy_rows(table, out)
    sizes = layout.sizes[positions]
    for slot, (rows, cols) in enumerate(sizes.tolist()):
        np.testing.assert_array_equal(out[slot, :, :rows, :cols], expected[slot, :, :rows, :cols])
        assert (out[slot, :, rows:] == 7).all() and (out[slot, :, :, cols:] == 7).all()  # padding untouched


def test_a_table_is_refused_for_tiles_the_kernel_would_misread(region_tiles):
    layout, tiles = region_tiles
    stack = tiles[2].stack
    odd = {**tiles, 2: RegionTiles(2, stack=np.asfortranarray(stack))}
    with pytest.raises(ValueError, match="region 2 are not C-contiguous"):
        frame_table(layout, odd, np.flatnonzero(layout.regions == 2)[:4], 3, stack.itemsize)
    with pytest.raises(ValueError, match="of 4 channels"):
        frame_table(layout, tiles, np.arange(4), 4, stack.itemsize)
