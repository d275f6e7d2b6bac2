"""Up-front checks of the images: missing files, boxes outside images, unreadable TIFFs, band
counts that cannot give the channels asked for and regions whose images differ in size, all found
before any epoch starts."""

import os
import re

import numpy as np
import pytest
import tifffile

from dalidw import DataError, SequenceDataLoader
from dalidw.cli import main
from dalidw.validate import read_header

from .conftest import YEARS, make_dataset, reference_sequence


def loader(ds, **kw):
    return SequenceDataLoader(YEARS, ds.table, ds.image_dir, device="cpu", **kw)


def test_a_missing_year_is_named_with_its_path(dataset):
    path = os.path.join(dataset.image_dir, "2017", "11.tif")
    os.remove(path)
    with pytest.raises(DataError, match=r"missing image for label 2017, region '11': .*2017.11\.tif"):
        loader(dataset)


def test_a_box_outside_its_image_is_named(dataset):
    table = dataset.table
    tile = table.tile_id.iloc[0]
    table.loc[table.tile_id == tile, "region_coordinates"] = "(100, 0, 113, 10)"
    with pytest.raises(DataError, match=rf"tile_id {tile}: box \(100, 0, 113, 10\) lies outside .* \(112x96 pixels"):
        loader(dataset)


def test_all_problems_are_gathered(dataset):
    os.remove(os.path.join(dataset.image_dir, "2016", "10.tif"))
    os.remove(os.path.join(dataset.image_dir, "2018", "11.tif"))
    with pytest.raises(DataError) as info:
        loader(dataset)
    assert len(info.value.problems) == 2


def test_an_unreadable_tiff_is_named(dataset):
    path = os.path.join(dataset.image_dir, "2018", "10.tif")
    with open(path, "wb") as f:
        f.write(b"this is not a tiff")
    with pytest.raises(DataError, match=r"2018.10\.tif: not a readable TIFF"):
        loader(dataset)


def test_gray_images_cannot_give_rgb(tmp_path):
    ds = make_dataset(tmp_path, bands=1)
    with pytest.raises(DataError, match="has 1 band\\(s\\); n_channels=3 needs an RGB or RGBA image"):
        loader(ds, n_channels=3)


def test_a_missing_image_dir_is_said_plainly(dataset):
    with pytest.raises(DataError, match="is not a directory"):
        SequenceDataLoader(YEARS, dataset.table, dataset.image_dir + "-nope", device="cpu")


def test_unsupported_sample_types_are_refused(tmp_path, dataset):
    path = os.path.join(dataset.image_dir, "2016", "10.tif")
    tifffile.imwrite(path, np.zeros((96, 112, 3), np.float64), photometric="rgb")
    with pytest.raises(DataError) as info:
        loader(dataset)
    assert "samples are float64; supported: uint8, uint16, int16, float32" in str(info.value)
    assert "images mix sample types" in str(info.value)


def test_headers_are_read_without_decoding(dataset):
    info = read_header(os.path.join(dataset.image_dir, "2016", "10.tif"))
    assert (info.height, info.width, info.channels, info.dtype.name) == (96, 112, 3, "uint8")


@pytest.mark.parametrize("kw, message", [
    ({"dim": (64,)}, r"Expected `dim` to be \(height, width\) of positive ints. Received: dim=\(64,\)"),
    ({"dim": (0, 4)}, "Expected `dim`"),
    ({"batch_size": 0}, "Expected `batch_size` to be a positive int"),
    ({"n_channels": 4}, "Expected `n_channels` to be 1 \\(gray\\) or 3 \\(RGB\\)"),
    ({"device": "tpu"}, "Expected `device` to be 'auto', 'cpu', 'gpu' or 'gpu:N'"),
    ({"target": []}, "Expected `target`"),
    ({"cache_bytes": -1}, "Expected `cache_bytes` to be an int >= 0"),
])
def test_bad_options_are_named(dataset, kw, message):
    options = {"device": "cpu", **kw}
    with pytest.raises(ValueError, match=message):
        SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, **options)


@pytest.mark.parametrize("kw, message", [
    ({"cache_bytes": -1}, r"Expected `cache_bytes` to be an int >= 0. Received: cache_bytes=-1"),
    ({"cache_bytes": 1.5e9}, "Expected `cache_bytes` to be an int >= 0"),
    ({"device_cache_bytes": -2}, r"Expected `device_cache_bytes` to be an int >= 0 or None"),
    ({"min_tile_size": 0}, "Expected `min_tile_size` to be an int >= 1"),
    ({"max_image_pixels": 0}, "Expected `max_image_pixels` to be an int >= 1"),
    ({"num_threads": 2.5}, r"Expected `num_threads` to be an int >= 1 or None. Received: num_threads=2.5"),
    ({"num_threads": "4"}, "Expected `num_threads`"),
    ({"scale": -1}, "Expected `scale` to be a positive number"),
])
def test_bad_bounds_and_counts_are_named_before_any_file_is_read(tmp_path, dataset, kw, message):
    missing = tmp_path / "no-such-folder"  # reading any file would be a DataError naming it
    with pytest.raises(ValueError, match=message):
        SequenceDataLoader(YEARS, dataset.table, missing, device="cpu", **kw)


# -- a region whose images differ in size across labels --------------------------------------------

def georeferenced(path, image, *, pixel: float, origin=(600000.0, 5000000.0)) -> None:
    """An RGB GeoTIFF on a north-up grid of square ``pixel``s (metres, UTM 33N) from ``origin``, its top-left."""
    keys = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633]
    tifffile.imwrite(path, image, photometric="rgb",
                     extratags=[(33550, "d", 3, (pixel, pixel, 0.0), False),
                                (33922, "d", 6, (0, 0, 0, *origin, 0), False), (34735, "H", len(keys), keys, False)])


def resampled(ds, year=2017, region=10) -> np.ndarray:
    """Write ``year``'s image of ``region`` again at twice the resolution (each pixel as 2x2); returns it."""
    image = np.kron(ds.images[year, region], np.ones((2, 2, 1), np.uint8))
    tifffile.imwrite(os.path.join(ds.image_dir, str(year), f"{region}.tif"), image, photometric="rgb")
    ds.images[year, region] = image
    return image


def test_a_region_whose_images_differ_in_size_is_named_with_each_size(dataset):
    resampled(dataset)
    with pytest.raises(DataError) as info:
        loader(dataset)
    assert info.value.problems == [
        "region '10': images differ in size across labels: 2016 112x96, 2017 224x192, 2018 112x96 (width x height); "
        "the same pixel box may cut other ground in each label; pass allow_mixed_sizes=True to read each box in each "
        "label's own pixels"]


def test_allow_mixed_sizes_reads_each_box_in_each_labels_own_pixels(dataset):
    resampled(dataset)
    ld = loader(dataset, allow_mixed_sizes=True, shuffle=False, dim=(16, 16))
    region = ld.images.region_index["10"]
    assert ld.images.heights[:, region].tolist() == [96, 192, 96]
    position = list(ld.table.region_ids).index("10")
    x, _ = ld.sample(position)
    expected = reference_sequence(dataset, ld.table.tile_ids[position], YEARS, (16, 16))
    np.testing.assert_allclose(x, expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("pixel_2017, origin_2017, grids", [
    (5.0, (600000.0, 5000000.0), "and their GeoTIFF grids differ: pixel size 10 vs 5; the same pixel box cuts "
                                 "other ground in each"),
    (10.0, (599040.0, 5000960.0), "and their GeoTIFF grids differ: origin (600000, 5000000) vs (599040, 5000960); "
                                  "the same pixel box cuts other ground in each"),
    (10.0, (600000.0, 5000000.0), "though their GeoTIFF grids share CRS, pixel size and origin (only the extent "
                                  "differs)"),
], ids=["pixel size", "origin", "extent only"])
def test_the_message_says_how_georeferenced_grids_differ(dataset, pixel_2017, origin_2017, grids):
    for year in YEARS:
        image = resampled(dataset) if year == 2017 else dataset.images[year, 10]
        place = {"pixel": pixel_2017, "origin": origin_2017} if year == 2017 else {"pixel": 10.0}
        georeferenced(os.path.join(dataset.image_dir, str(year), "10.tif"), image, **place)
    with pytest.raises(DataError, match=re.escape(f"2018 112x96 (width x height), {grids}; pass allow_mixed_sizes")):
        loader(dataset)


def test_check_refuses_mixed_sizes_unless_allowed(dataset, tmp_path, capfd):
    resampled(dataset)
    dataset.table.to_csv(tmp_path / "tiles.csv", index=False)
    args = ["check", str(tmp_path / "tiles.csv"), dataset.image_dir, "--labels", "2016..2018"]
    assert main(args) == 2
    assert "region '10': images differ in size across labels: 2016 112x96, 2017 224x192" in capfd.readouterr().err
    assert main([*args, "--allow-mixed-sizes"]) == 0
