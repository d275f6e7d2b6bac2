"""`dalidw tiles`: the tiles table from region images, checked against numpy references."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
import tifffile

from dalidw import DataError, OptionError, SequenceDataLoader
from dalidw.cli import main
from dalidw.synth import SynthSpec, write_dataset
from dalidw.tiles import build_tiles, write_tiles
from dalidw.train import split_by_column

LABELS = [2016, 2017, 2018]


def write(path: str, image: np.ndarray, **options) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tifffile.imwrite(path, image, **options)


def class_maps(tmp_path, regions=2, shape=(60, 70), classes=5, seed=0, **options) -> tuple[str, dict]:
    """Random class maps Images/{label}/{region}.tif; returns (image_dir, {(label, region): map})."""
    rng = np.random.default_rng(seed)
    maps = {}
    for label in LABELS:
        for region in range(regions):
            maps[label, region] = rng.integers(0, classes, shape, dtype=np.uint8)
            write(str(tmp_path / "Images" / str(label) / f"{region}.tif"), maps[label, region], **options)
    return str(tmp_path / "Images"), maps


def reference_boxes(shape, tile, stride):
    """(xmin, ymin, xmax, ymax) of every tile fully inside ``shape``, rows of tiles first."""
    return [(x, y, x + tile[1], y + tile[0]) for y in range(0, shape[0] - tile[0] + 1, stride[0])
            for x in range(0, shape[1] - tile[1] + 1, stride[1])]


def test_synth_class_maps_give_back_the_synthetic_targets_exactly(tmp_path):
    spec = SynthSpec(regions=3, height=120, width=135, tile=(40, 45), kind="label", years=LABELS)
    expected = write_dataset(tmp_path, spec)
    table, report = build_tiles(tmp_path / "Images", (40, 45), targets=["fraction:6"])
    assert report.tiles == expected.tile_id.nunique() and report.nodata_skipped == 0
    for column in ("tile_id", "region_id", "label_id", "region_coordinates"):
        assert table[column].tolist() == expected[column].tolist(), column
    assert (table["target"].round(6).to_numpy() == expected["target"].to_numpy()).all()


def test_the_cli_builds_a_table_the_loader_and_train_read(tmp_path):
    data = tmp_path / "data"
    assert main(["synth", str(data), "--regions", "3", "--size", "96x96", "--tile", "32x32", "--labels",
                 "2016..2018", "--class-maps"]) == 0
    out = tmp_path / "tiles.csv"
    assert main(["tiles", str(data / "Images"), "--tile", "32", "32", "--target", "fraction:6",
                 "--target-images", str(data / "ClassMaps"), "--split", "region", "-o", str(out)]) == 0
    table = pd.read_csv(out)
    expected = pd.read_csv(data / "tiles.csv")
    assert table["target"].round(6).tolist() == expected["target"].tolist()
    assert set(table["split"]) == {"train", "val", "test"}
    loader = SequenceDataLoader(LABELS, table, str(data / "Images"), dim=(16, 16), batch_size=4, shuffle=False,
                                device="cpu")
    x, y = loader[0]
    last = table[table.label_id == LABELS[-1]]
    assert x.shape == (4, 3, 16, 16, 3)
    np.testing.assert_allclose(y, last["target"].to_numpy()[:4], rtol=1e-6)


@pytest.mark.parametrize("stride", [(20, 30), (20, 20), (7, 11)])
def test_targets_equal_a_per_tile_loop(tmp_path, stride):
    image_dir, maps = class_maps(tmp_path, classes=6)
    tile = (20, 30)
    table, _ = build_tiles(image_dir, tile, stride=stride, targets=["fraction:1,4", "change:2", "mean:0"])
    assert list(table.columns[:6]) == ["tile_id", "region_id", "label_id", "target", "change:2", "mean:0"]
    boxes = reference_boxes((60, 70), tile, stride)
    rows = table.set_index(["region_id", "region_coordinates", "label_id"])
    for region in range(2):
        for x0, y0, x1, y1 in boxes:
            first = maps[LABELS[0], region][y0:y1, x0:x1]
            for label in LABELS:
                crop = maps[label, region][y0:y1, x0:x1]
                row = rows.loc[(region, f"({x0}, {y0}, {x1}, {y1})", label)]
                assert row["target"] == pytest.approx(np.isin(crop, [1, 4]).mean(), abs=1e-12)
                assert row["change:2"] == pytest.approx((crop == 2).mean() - (first == 2).mean(), abs=1e-12)
                assert row["mean:0"] == pytest.approx(crop.astype(np.float64).mean(), abs=1e-9)
    assert len(table) == 2 * len(boxes) * len(LABELS)


def geotiff(path, image, *, scale=(10.0, 20.0), tie=(0, 0, 0, 600000.0, 5000000.0, 0), epsg=32633, point=False):
    keys = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 2 if point else 1, 3072, 0, 1, epsg]
    write(path, image, extratags=[(33550, "d", 3, (*scale, 0.0), False), (33922, "d", 6, tie, False),
                                  (34735, "H", len(keys), keys, False)])


@pytest.mark.parametrize("point", [False, True])
def test_a_georeferenced_image_gives_each_tile_its_bounds(tmp_path, point):
    for label in LABELS:
        geotiff(str(tmp_path / "Images" / str(label) / "r.tif"), np.zeros((50, 40), np.uint8), point=point)
    table, _ = build_tiles(tmp_path / "Images", (25, 20))
    shift = 0.5 if point else 0.0  # PixelIsPoint: the tie point is a pixel's centre
    for _, row in table.iterrows():
        x0, y0, x1, y1 = (int(v) for v in row["region_coordinates"].strip("()").split(","))
        assert row["left"] == pytest.approx(600000.0 + (x0 - shift) * 10.0)
        assert row["right"] == pytest.approx(600000.0 + (x1 - shift) * 10.0)
        assert row["top"] == pytest.approx(5000000.0 - (y0 - shift) * 20.0)
        assert row["bottom"] == pytest.approx(5000000.0 - (y1 - shift) * 20.0)
        assert row["epsg"] == 32633
    assert table["tile_id"].nunique() == 4


def test_a_transformation_matrix_gives_rotated_bounds(tmp_path):
    matrix = (2.0, 1.0, 0.0, 100.0, 1.0, -3.0, 0.0, 200.0, 0, 0, 0, 0, 0, 0, 0, 1)
    for label in LABELS:
        write(str(tmp_path / "Images" / str(label) / "r.tif"), np.zeros((10, 10), np.uint8),
              extratags=[(34264, "d", 16, matrix, False)])
    table, _ = build_tiles(tmp_path / "Images", 10)
    corners = [(0, 0), (10, 0), (0, 10), (10, 10)]
    xs = [100 + 2 * c + 1 * r for c, r in corners]
    ys = [200 + 1 * c - 3 * r for c, r in corners]
    row = table.iloc[0]
    assert (row["left"], row["bottom"], row["right"], row["top"]) == (min(xs), min(ys), max(xs), max(ys))
    assert pd.isna(row["epsg"])


def near(a, b, tile) -> bool:
    """Whether two boxes are closer than one tile in both directions."""
    gap_x = max(0, max(a[0], b[0]) - min(a[2], b[2]))
    gap_y = max(0, max(a[1], b[1]) - min(a[3], b[3]))
    return gap_x < tile[1] and gap_y < tile[0]


@pytest.mark.parametrize("stride", [(10, 10), (5, 10)])
def test_a_block_split_leaves_a_tile_of_distance_between_splits(tmp_path, stride):
    image_dir, _ = class_maps(tmp_path, regions=2, shape=(120, 130))
    tile = (10, 10)
    table, report = build_tiles(image_dir, tile, stride=stride, split="blocks:3", fractions="0.5,0.25,0.25", seed=3)
    tiles = table.drop_duplicates("tile_id")
    assert set(tiles["split"]) == {"train", "val", "test"}
    assert report.buffer_dropped > 0 and report.tiles == len(tiles)
    assert sum(report.splits.values()) == len(tiles)
    for region, group in tiles.groupby("region_id"):
        boxes = [tuple(int(v) for v in c.strip("()").split(",")) for c in group["region_coordinates"]]
        splits = group["split"].tolist()
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                if splits[i] != splits[j]:
                    assert not near(boxes[i], boxes[j], tile), (region, boxes[i], boxes[j])


def test_writing_region_by_region_gives_the_table_built_in_memory(tmp_path):
    for label in LABELS:
        for region in ("a", "b"):
            geotiff(str(tmp_path / "Images" / str(label) / f"{region}.tif"),
                    np.random.default_rng(label).integers(0, 4, (40, 40), dtype=np.uint8))
    options = dict(targets=["fraction:1", "mean:0"], split="blocks:2", fractions=(0.5, 0.5), seed=4)
    table, report = build_tiles(tmp_path / "Images", 10, **options)
    streamed = write_tiles(tmp_path / "Images", 10, tmp_path / "tiles.csv", **options)
    assert streamed == report
    written = pd.read_csv(tmp_path / "tiles.csv")
    expected = pd.read_csv(io.StringIO(table.to_csv(index=False)))
    pd.testing.assert_frame_equal(written, expected)
    assert sorted(os.listdir(tmp_path)) == ["Images", "tiles.csv"]  # no temporary file left


def test_a_split_follows_from_its_seed_and_regions_stay_whole(tmp_path):
    image_dir, _ = class_maps(tmp_path, regions=6, shape=(40, 40))
    one, _ = build_tiles(image_dir, 10, split="region", seed=1)
    again, _ = build_tiles(image_dir, 10, split="region", seed=1)
    other, _ = build_tiles(image_dir, 10, split="blocks:2", seed=2)
    pd.testing.assert_frame_equal(one, again)
    assert one.groupby("region_id")["split"].nunique().max() == 1
    assert set(one["split"]) == {"train", "val", "test"}
    assert not other["split"].equals(one["split"])


def test_nodata_tiles_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    for label in LABELS:
        image = rng.random((40, 40), dtype=np.float32)
        if label == 2017:
            image[0:3, 0:3] = np.nan  # tile (0, 0): 9 of 400 pixels
        image[20:40, 20:40] = -9999 if label == 2018 else image[20:40, 20:40]  # tile (1, 1): all
        write(str(tmp_path / "Images" / str(label) / "r.tif"), image, extratags=[(42113, "s", 0, "-9999", False)])
    table, report = build_tiles(tmp_path / "Images", 20)
    assert report.nodata_skipped == 2 and sorted(table["tile_id"].unique()) == [1, 2]
    table, report = build_tiles(tmp_path / "Images", 20, targets=["mean:0"], max_nodata=0.05)
    assert report.nodata_skipped == 1 and sorted(table["tile_id"].unique()) == [0, 1, 2]
    valid = tifffile.imread(tmp_path / "Images" / "2017" / "r.tif")[:20, :20].astype(np.float64)
    row = table[(table.tile_id == 0) & (table.label_id == 2017)].iloc[0]
    assert row["target"] == pytest.approx(np.nanmean(valid))
    with pytest.raises(DataError, match="no tile left"):
        build_tiles(tmp_path / "Images", 40)


def test_a_nodata_value_marks_class_map_pixels(tmp_path):
    image_dir, maps = class_maps(tmp_path, regions=1, shape=(20, 20), classes=3)
    table, report = build_tiles(image_dir, 10, targets=["fraction:1"], nodata=0.0, max_nodata=1.0)
    crop = maps[2018, 0][:10, :10]
    row = table[(table.tile_id == 0) & (table.label_id == 2018)].iloc[0]
    assert row["target"] == pytest.approx((crop == 1).sum() / (crop != 0).sum())


def test_missing_labels_and_mismatched_grids_are_listed(tmp_path):
    image_dir, _ = class_maps(tmp_path, regions=3)
    os.remove(tmp_path / "Images" / "2017" / "1.tif")
    with pytest.raises(DataError, match=r"region 1: no images for label\(s\) 2017"):
        build_tiles(image_dir, 10)
    write(str(tmp_path / "Images" / "2017" / "1.tif"), np.zeros((60, 71), np.uint8))
    write(str(tmp_path / "Images" / "2018" / "2.tif"), np.zeros((61, 70), np.uint8))
    with pytest.raises(DataError, match="another grid") as err:
        build_tiles(image_dir, 10)
    assert [p.split(":")[0] for p in err.value.problems] == ["region 1", "region 2"]


def test_georeferenced_labels_on_shifted_grids_are_refused(tmp_path):
    geotiff(str(tmp_path / "Images" / "2016" / "r.tif"), np.zeros((20, 20), np.uint8))
    geotiff(str(tmp_path / "Images" / "2017" / "r.tif"), np.zeros((20, 20), np.uint8),
            tie=(0, 0, 0, 600010.0, 5000000.0, 0))
    with pytest.raises(DataError, match="region r: .*2017.* another grid"):
        build_tiles(tmp_path / "Images", 10)


@pytest.mark.parametrize(("options", "message"), [
    ({"targets": ["fraction:300"]}, r"class id\(s\) \[300\] outside the uint8 range"),
    ({"targets": ["mean:1"]}, "band 1 of an image of 1 band"),
    ({"tile": (61, 10)}, "the tile 61x10 is larger than its 60x70 image"),
])
def test_targets_and_tiles_that_cannot_be_computed_name_the_file(tmp_path, options, message):
    image_dir, _ = class_maps(tmp_path, regions=1)
    options = {"tile": 10, **options}
    with pytest.raises(DataError, match=message):
        build_tiles(image_dir, **options)


@pytest.mark.parametrize(("options", "message"), [
    ({"tile": 0}, r"Expected `tile` to be \(height, width\) of positive ints. Received: tile=0"),
    ({"tile": (10, 2.5)}, r"Received: tile=\(10, 2.5\)"),
    ({"tile": 10, "stride": (5, 0)}, r"Expected `stride` to be .* Received: stride=\(5, 0\)"),
    ({"tile": True}, r"Received: tile=True"),
    ({"tile": 10, "max_nodata": True}, r"Received: max_nodata=True"),
    ({"tile": 10, "nodata": False}, r"Received: nodata=False"),
])
def test_tile_and_stride_must_be_positive_int_sizes_and_options_numbers_not_bools(tmp_path, options, message):
    image_dir, _ = class_maps(tmp_path, regions=1)
    with pytest.raises(OptionError, match=message):
        build_tiles(image_dir, **options)


def test_a_class_target_needs_one_band_class_maps(tmp_path):
    for label in LABELS:
        write(str(tmp_path / "Images" / str(label) / "r.tif"), np.zeros((20, 20, 3), np.uint8), photometric="rgb")
    with pytest.raises(DataError, match="needs one-band class maps.*--target-images"):
        build_tiles(tmp_path / "Images", 10, targets=["fraction:6"])


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "share:6"], "Expected a target like"),
    (["--split", "tiles"], "Expected --split to be"),
    (["--split", "blocks:0"], "blocks:N with N >= 1"),
    (["--split", "region", "--split-fractions", "0.5,0.6"], "sum to 1"),
    (["--tile", "0"], "--tile/--stride"),
    (["--max-nodata", "2"], "max_nodata"),
])
def test_cli_mistakes_exit_2_and_leave_no_table(tmp_path, capfd, args, message):
    image_dir, _ = class_maps(tmp_path, regions=2)
    out = tmp_path / "out" / "tiles.csv"
    out.parent.mkdir()
    argv = ["tiles", image_dir, "-o", str(out), *args]
    if "--tile" not in args:
        argv += ["--tile", "10"]
    assert main(argv) == 2
    assert message in capfd.readouterr().err
    assert os.listdir(out.parent) == []


def test_an_unwritable_output_is_refused_before_any_work(tmp_path, capfd):
    image_dir, _ = class_maps(tmp_path, regions=1)
    assert main(["tiles", image_dir, "--tile", "10", "-o", str(tmp_path / "missing" / "tiles.csv")]) == 2
    assert "cannot be written" in capfd.readouterr().err


def test_train_splits_by_the_table_split_column():
    table = pd.DataFrame({"tile_id": [1, 2, 3, 4], "split": ["train", "val", "test", "train"]})
    train, val = split_by_column(table)
    assert train["tile_id"].tolist() == [1, 4] and val["tile_id"].tolist() == [2]
    with pytest.raises(DataError, match="no row has split == 'val'"):
        split_by_column(table.assign(split=["train", "test", "test", "train"]))
    with pytest.raises(DataError, match="'holdout' is not train, val or test"):
        split_by_column(table.assign(split=["train", "val", "holdout", "train"]))
    with pytest.raises(DataError, match="column 'split' appears 2 times"):
        split_by_column(pd.concat([table, table[["split"]]], axis=1))
