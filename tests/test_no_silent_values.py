"""No wrong value without an error: TIFF variants that a decoder would convert come out as stored
(as tifffile and rasterio read them) or are refused by name; NaN stays where it is; hostile tables
and files are refused with the row or the file named."""

import inspect
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tifffile

from dalidw import DataError, DecodeError, SequenceDataLoader

YEARS = [2016, 2017]


def write_region(root, image, **options) -> str:
    """One region "7" for every year, the same image, and one tile covering a box of it."""
    for year in YEARS:
        os.makedirs(os.path.join(root, "Images", str(year)), exist_ok=True)
        tifffile.imwrite(os.path.join(root, "Images", str(year), "7.tif"), image, **options)
    return os.path.join(root, "Images")


def table(box=(0, 0, 16, 12), region_id=7, target=0.5, tiles=1) -> pd.DataFrame:
    return pd.DataFrame([{"tile_id": t, "region_id": region_id, "target": target, "region_coordinates": str(box)}
                         for t in range(tiles)])


def first_frame(image_dir, box=(0, 0, 16, 12), **options):
    ld = SequenceDataLoader(YEARS, table(box), image_dir, device="cpu", batch_size=1, shuffle=False,
                            dim=(box[3] - box[1], box[2] - box[0]), **options)
    x, _ = ld[0]
    return x[0, 0], ld


def test_a_palette_image_gives_its_stored_indices_not_colours(tmp_path):
    ids = np.random.default_rng(0).integers(0, 4, (12, 16), dtype=np.uint8)
    colormap = np.zeros((3, 256), np.uint16)
    colormap[:, :4] = [[0, 65535, 0, 30000], [0, 0, 65535, 30000], [65535, 0, 0, 30000]]
    image_dir = write_region(tmp_path, ids, photometric="palette", colormap=colormap)
    frame, ld = first_frame(image_dir, n_channels=1, normalize=False, interpolation="nearest")
    np.testing.assert_array_equal(frame[..., 0], tifffile.imread(os.path.join(image_dir, "2016", "7.tif")))
    assert "palette" in next(iter(ld.slow_path.values()))
    one_hot, _ = first_frame(image_dir, n_channels=1, num_classes=4)
    np.testing.assert_array_equal(one_hot.argmax(-1), ids)


def test_the_slow_path_warning_points_at_the_line_that_builds_the_loader(tmp_path):
    from dalidw import SlowPathWarning

    image_dir = write_region(tmp_path, np.zeros((12, 16), np.uint16), bitspersample=12, photometric="minisblack")
    with pytest.warns(SlowPathWarning) as caught:
        line = inspect.currentframe().f_lineno + 1
        SequenceDataLoader(YEARS, table(), image_dir, device="cpu", n_channels=1, dim=(12, 16))
    assert [(w.filename, w.lineno) for w in caught if w.category is SlowPathWarning] == [(__file__, line)]


def test_a_warning_raised_while_a_batch_is_decoded_points_at_the_line_that_asks_for_it(tmp_path):
    image = np.random.default_rng(3).random((12, 16, 3)).astype(np.float32)
    image[5, 6, 1] = np.nan
    image_dir = write_region(tmp_path, image, photometric="rgb", compression="zlib")
    ld = SequenceDataLoader(YEARS, table(), image_dir, device="cpu", dim=(12, 16))
    with pytest.warns(RuntimeWarning, match="NaN sample") as caught:
        line = inspect.currentframe().f_lineno + 1
        ld[0]
    assert {(w.filename, w.lineno) for w in caught} == {(__file__, line)}


def test_a_palette_image_is_not_read_as_rgb(tmp_path):
    ids = np.zeros((12, 16), np.uint8)
    image_dir = write_region(tmp_path, ids, photometric="palette", colormap=np.zeros((3, 256), np.uint16))
    with pytest.raises(DataError, match="has 1 band"):
        first_frame(image_dir)


def test_12_bit_samples_keep_their_stored_values(tmp_path):
    values = (np.arange(12 * 16).reshape(12, 16) * 21 % 4096).astype(np.uint16)
    image_dir = write_region(tmp_path, values, bitspersample=12, photometric="minisblack")
    frame, ld = first_frame(image_dir, n_channels=1, normalize=False)
    np.testing.assert_array_equal(frame[..., 0], values)
    assert "12-bit" in next(iter(ld.slow_path.values()))


def test_cmyk_is_refused_as_rgb_and_read_as_stored_bands(tmp_path):
    cmyk = np.random.default_rng(1).integers(0, 256, (12, 16, 4), dtype=np.uint8)
    image_dir = write_region(tmp_path, cmyk, photometric="separated")
    with pytest.raises(DataError, match="photometric SEPARATED is not RGB.*bands="):
        first_frame(image_dir)
    frame, _ = first_frame(image_dir, bands=[0, 1, 2, 3], normalize=False)
    np.testing.assert_array_equal(frame, cmyk)


def test_min_is_white_keeps_its_stored_values(tmp_path):
    gray = np.random.default_rng(2).integers(0, 256, (12, 16), dtype=np.uint8)
    image_dir = write_region(tmp_path, gray, photometric="miniswhite")
    frame, _ = first_frame(image_dir, n_channels=1, normalize=False)
    np.testing.assert_array_equal(frame[..., 0], gray)


def test_nan_stays_in_its_own_pixel_when_the_box_has_the_output_size(tmp_path):
    image = np.random.default_rng(3).random((12, 16, 3)).astype(np.float32)
    image[5, 6, 1] = np.nan
    image_dir = write_region(tmp_path, image, photometric="rgb", compression="zlib")
    with pytest.warns(RuntimeWarning, match="holds 1 NaN sample"):
        frame, _ = first_frame(image_dir)
    np.testing.assert_array_equal(np.argwhere(np.isnan(frame)), [[5, 6, 1]])
    np.testing.assert_array_equal(frame, image)
    audited, _ = first_frame(image_dir, verify_decode=True)  # NaN == NaN for the audit
    np.testing.assert_array_equal(audited, image)


@pytest.mark.parametrize("region_id", ["../outside", "/etc/passwd", "..", "a/b"])
def test_a_region_id_that_leaves_the_image_folder_is_refused(tmp_path, region_id):
    image_dir = write_region(tmp_path, np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(DataError, match="region ids name files inside image_dir"):
        SequenceDataLoader(YEARS, table(region_id=region_id), image_dir, device="cpu")


def test_a_target_beyond_float32_is_refused_with_its_row(tmp_path):
    image_dir = write_region(tmp_path, np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(DataError, match=r"row 0 \(tile_id 0\): target 'target' is 1e\+39, beyond float32"):
        SequenceDataLoader(YEARS, table(target=1e39), image_dir, device="cpu")


def test_a_huge_coordinate_is_refused_with_its_row(tmp_path):
    image_dir = write_region(tmp_path, np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(DataError, match=r"row 0 \(tile_id 0\): box .* has a coordinate beyond"):
        SequenceDataLoader(YEARS, table(box=(0, 0, 16, 10**30)), image_dir, device="cpu")


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    image_dir = write_region(tmp_path, np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(DataError, match=r"16x12 pixels .* is more than max_image_pixels=100"):
        SequenceDataLoader(YEARS, table(), image_dir, device="cpu", max_image_pixels=100)


def test_a_file_replaced_with_other_bands_after_construction_is_named(tmp_path):
    image_dir = write_region(tmp_path, np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    ld = SequenceDataLoader(YEARS, table(), image_dir, device="cpu", batch_size=1)
    tifffile.imwrite(os.path.join(image_dir, "2017", "7.tif"), np.zeros((12, 16, 4), np.uint8), photometric="rgb",
                     extrasamples=[2])
    with pytest.raises(DecodeError, match=r"2017.7\.tif: cannot decode \(has 4 band\(s\) now; it had 3"):
        ld[0]


def test_a_batch_larger_than_the_table_allocates_only_the_tiles(tmp_path):
    image_dir = write_region(tmp_path, np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    ld = SequenceDataLoader(YEARS, table(tiles=3), image_dir, device="cpu", batch_size=20000, dim=(8, 8))
    x, y = ld[0]
    assert x.shape == (3, len(YEARS), 8, 8, 3) and y.shape == (3,)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "7"])
def test_a_seed_outside_32_bits_is_refused(tmp_path, seed):
    image_dir = write_region(tmp_path, np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match=r"Expected `random_seed` to be an int in \[0, 2\*\*32\)"):
        SequenceDataLoader(YEARS, table(), image_dir, device="cpu", random_seed=seed)


@pytest.mark.parametrize("start_epoch", [-1, 1.5])
def test_a_bad_start_epoch_is_refused_before_iterating(tmp_path, start_epoch):
    pytest.importorskip("tensorflow")
    image_dir = write_region(tmp_path, np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    ld = SequenceDataLoader(YEARS, table(), image_dir, device="cpu")
    with pytest.raises(ValueError, match="Expected an epoch to be an int >= 0"):
        ld.dataset(start_epoch=start_epoch)


def nan_image() -> np.ndarray:
    image = np.random.default_rng(4).random((12, 16, 3)).astype(np.float32)
    image[5, 6, 1] = np.nan
    return image


def test_nan_in_an_image_is_reported_once_per_file_without_a_nodata_rule(tmp_path):
    image_dir = write_region(tmp_path, nan_image(), photometric="rgb")
    with pytest.warns(RuntimeWarning, match=r"7\.tif holds 1 NaN sample\(s\).*nodata="):
        x, _ = first_frame(image_dir, box=(0, 0, 16, 12))
    assert np.isnan(x).sum() == 1


def test_nodata_nan_fills_nan_before_resizing_so_nothing_smears(tmp_path):
    image = nan_image()
    image_dir = write_region(tmp_path, image, photometric="rgb")
    ld = SequenceDataLoader(YEARS, table(), image_dir, device="cpu", batch_size=1, dim=(6, 8),
                            nodata=float("nan"), nodata_fill=0.5)
    x, _ = ld[0]
    assert not np.isnan(x).any()
    filled = np.where(np.isnan(image), np.float32(0.5), image)
    write_region(tmp_path / "filled", filled, photometric="rgb")
    reference = SequenceDataLoader(YEARS, table(), os.path.join(tmp_path, "filled", "Images"), device="cpu",
                                   batch_size=1, dim=(6, 8))
    np.testing.assert_array_equal(x, reference[0][0])


def test_nodata_tag_takes_each_files_gdal_nodata_value(tmp_path):
    image = np.random.default_rng(5).integers(0, 200, (12, 16), dtype=np.uint8)
    image[3, 4] = 255
    image_dir = write_region(tmp_path, image, photometric="minisblack", extratags=[(42113, "s", 0, "255", True)])
    frame, _ = first_frame(image_dir, n_channels=1, normalize=False, nodata="tag", nodata_fill=7)
    expected = image.astype(np.float32)
    expected[3, 4] = 7
    np.testing.assert_array_equal(frame[..., 0], expected)


@pytest.mark.parametrize("kw, message", [
    ({"nodata": "auto"}, "Expected `nodata` to be None, a number"),
    ({"nodata": 0, "nodata_fill": float("inf")}, "Expected `nodata_fill` to be a finite number"),
    ({"nodata": 0, "nodata_fill": 300}, r"`nodata_fill`=300 is not a uint8 sample"),
])
def test_bad_nodata_options_are_named(tmp_path, kw, message):
    image_dir = write_region(tmp_path, np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match=message):
        SequenceDataLoader(YEARS, table(), image_dir, device="cpu", **kw)


def damage_segment(path, index: int) -> None:
    """Overwrite 16 bytes in the middle of strip or tile ``index``'s compressed data, header kept."""
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages.first.dataoffsets[index], tif.pages.first.databytecounts[index]
    with open(path, "r+b") as file:
        file.seek(offset + count // 2)
        file.write(b"\xff" * 16)


DAMAGED_LAYOUTS = {
    "deflate tiles": ({"compression": "zlib", "tile": (16, 16)}, "tile 5 of 16"),
    "deflate strips": ({"compression": "zlib", "rowsperstrip": 16}, "strip 2 of 4"),
    "lzw tiles": ({"compression": "lzw", "tile": (16, 16)}, "tile 5 of 16"),
    "lzw strips": ({"compression": "lzw", "rowsperstrip": 16}, "strip 2 of 4"),
}


@pytest.mark.parametrize("layout", DAMAGED_LAYOUTS)
def test_one_damaged_compressed_segment_is_a_decode_error_naming_file_and_segment(tmp_path, layout):
    options, where = DAMAGED_LAYOUTS[layout]
    image = np.random.default_rng(6).integers(1, 256, (64, 64, 3), dtype=np.uint8)
    image_dir = write_region(tmp_path, image, photometric="rgb", **options)
    sound, _ = first_frame(image_dir, box=(0, 0, 64, 64), normalize=False)
    np.testing.assert_array_equal(sound, tifffile.imread(os.path.join(image_dir, "2016", "7.tif")))
    damage_segment(os.path.join(image_dir, "2017", "7.tif"), int(where.split()[1]))
    with pytest.raises(DecodeError, match=rf"2017.7\.tif: cannot decode \({where} is damaged: "):
        first_frame(image_dir, box=(0, 0, 64, 64))


def test_a_truncated_file_names_the_segment_beyond_its_end(tmp_path):
    image = np.random.default_rng(7).integers(1, 256, (64, 64, 3), dtype=np.uint8)
    image_dir = write_region(tmp_path, image, photometric="rgb", compression="zlib", rowsperstrip=16)
    path = os.path.join(image_dir, "2017", "7.tif")
    with tifffile.TiffFile(path) as tif:
        end = max(o + c for o, c in zip(tif.pages.first.dataoffsets, tif.pages.first.databytecounts))
    with open(path, "r+b") as file:
        file.truncate(end - 100)
    with pytest.raises(DecodeError, match=r"7\.tif: cannot decode \(strip 3 of 4 ends at byte \d+, beyond the end"):
        first_frame(image_dir, box=(0, 0, 64, 64))


def test_a_file_damaged_after_a_sound_decode_is_checked_again(tmp_path):
    image = np.random.default_rng(8).integers(1, 256, (64, 64, 3), dtype=np.uint8)
    image_dir = write_region(tmp_path, image, photometric="rgb", compression="zlib", tile=(16, 16))
    ld = SequenceDataLoader(YEARS, table(box=(0, 0, 64, 64)), image_dir, device="cpu", batch_size=1, cache_bytes=0,
                            dim=(64, 64), normalize=False)
    np.testing.assert_array_equal(ld[0][0][0, 1], image)
    damage_segment(os.path.join(image_dir, "2017", "7.tif"), 3)
    with pytest.raises(DecodeError, match=r"2017.7\.tif: cannot decode \(tile 3 of 16 is damaged"):
        ld[0]


def test_check_finds_every_damaged_file_with_decode_and_says_headers_only_without(tmp_path, capfd):
    from dalidw.cli import main

    image = np.random.default_rng(9).integers(1, 256, (64, 64, 3), dtype=np.uint8)
    image_dir = write_region(tmp_path, image, photometric="rgb", compression="zlib", tile=(16, 16))
    for year in YEARS:
        damage_segment(os.path.join(image_dir, str(year), "7.tif"), 2)
    table(box=(0, 0, 64, 64)).to_csv(tmp_path / "tiles.csv", index=False)
    args = [str(tmp_path / "tiles.csv"), image_dir, "--labels", "2016,2017"]
    assert main(["check", *args]) == 0
    assert "no pixel was decoded, so damaged strips or tiles are not found: --decode" in capfd.readouterr().out
    assert main(["check", *args, "--decode"]) == 2
    err = capfd.readouterr().err
    assert "images with damaged strips or tiles (2 in all)" in err
    for year in YEARS:
        assert f"{os.path.join(image_dir, str(year), '7.tif')}: cannot decode (tile 2 of 16 is damaged" in err


def test_the_tensorflow_error_of_dataset_carries_the_path_and_the_reason(tmp_path):
    tf = pytest.importorskip("tensorflow")
    image = np.random.default_rng(10).integers(1, 256, (64, 64, 3), dtype=np.uint8)
    image_dir = write_region(tmp_path, image, photometric="rgb", compression="zlib", tile=(16, 16))
    damage_segment(os.path.join(image_dir, "2017", "7.tif"), 4)
    ld = SequenceDataLoader(YEARS, table(box=(0, 0, 64, 64)), image_dir, device="cpu", batch_size=1, dim=(8, 8))
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        next(iter(ld.dataset()))
    message = str(caught.value)
    path = os.path.join(image_dir, "2017", "7.tif")
    expected = f"DecodeError: dalidw could not decode an image (1 in all):\n  - {path}: cannot decode (tile 4 of 16"
    assert expected in message


def test_train_names_a_damaged_file_in_one_line_with_exit_code_2(tmp_path):
    pytest.importorskip("tensorflow")
    image = np.random.default_rng(11).integers(1, 256, (64, 64, 3), dtype=np.uint8)
    image_dir = write_region(tmp_path, image, photometric="rgb", compression="zlib", tile=(16, 16))
    for year in YEARS:
        shutil.copy(os.path.join(image_dir, str(year), "7.tif"), os.path.join(image_dir, str(year), "8.tif"))
    damage_segment(os.path.join(image_dir, "2017", "7.tif"), 4)
    rows = pd.concat([table(box=(0, 0, 32, 32)).assign(region_id=r, tile_id=r) for r in (7, 8)])
    rows.to_csv(tmp_path / "tiles.csv", index=False)
    exe = shutil.which("dalidw") or os.path.join(os.path.dirname(sys.executable), "dalidw")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a shell has it (Keras sets 1)
    done = subprocess.run([exe, "train", str(tmp_path / "tiles.csv"), image_dir, "--labels", "2016,2017", "--epochs",
                           "1", "--dim", "8x8", "--device", "cpu", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600, env=env)
    err = done.stderr
    assert done.returncode == 2, err
    assert "Traceback" not in err
    assert f"{os.path.join(image_dir, '2017', '7.tif')}: cannot decode (tile 4 of 16 is damaged" in err


def link_region(root, target) -> str:
    """Images/2016/7.tif a real file; Images/2017/7.tif a symbolic link to ``target``."""
    image_dir = write_region(root, np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    link = os.path.join(image_dir, "2017", "7.tif")
    os.remove(link)
    os.symlink(target, link)
    return image_dir


def test_a_symlink_out_of_image_dir_is_refused_unless_allowed(tmp_path):
    outside = np.random.default_rng(11).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "secret.tif", outside, photometric="rgb")
    image_dir = link_region(tmp_path / "data", tmp_path / "secret.tif")
    with pytest.raises(DataError, match=r"label 2017, region '7': .*2017.7\.tif is a symbolic link .* resolves to "
                                        r".*secret\.tif, outside image_dir .*; pass allow_outside_links=True"):
        first_frame(image_dir)
    frame, _ = first_frame(image_dir, normalize=False, allow_outside_links=True)
    np.testing.assert_array_equal(frame, np.zeros((12, 16, 3)))
    ld = SequenceDataLoader(YEARS, table(), image_dir, device="cpu", batch_size=1, dim=(12, 16), normalize=False,
                            allow_outside_links=True)
    np.testing.assert_array_equal(ld[0][0][0, 1], tifffile.imread(tmp_path / "secret.tif"))


def test_a_year_folder_linked_out_of_image_dir_is_refused(tmp_path):
    image_dir = write_region(tmp_path / "data", np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    os.rename(os.path.join(image_dir, "2017"), tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", os.path.join(image_dir, "2017"))
    with pytest.raises(DataError, match=r"label 2017, region '7': .*resolves to .*elsewhere.7\.tif, outside image_dir"):
        first_frame(image_dir)


def test_symlinks_that_stay_inside_image_dir_are_read(tmp_path):
    image = np.random.default_rng(12).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image_dir = write_region(tmp_path, np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    os.makedirs(os.path.join(image_dir, "archive"))
    tifffile.imwrite(os.path.join(image_dir, "archive", "7.tif"), image, photometric="rgb")
    os.remove(os.path.join(image_dir, "2017", "7.tif"))
    os.symlink(os.path.join("..", "archive", "7.tif"), os.path.join(image_dir, "2017", "7.tif"))
    ld = SequenceDataLoader(YEARS, table(), os.path.join(image_dir, "."), device="cpu", batch_size=1, dim=(12, 16),
                            normalize=False)
    np.testing.assert_array_equal(ld[0][0][0, 1], tifffile.imread(os.path.join(image_dir, "archive", "7.tif")))


def test_a_symlink_redirected_out_of_image_dir_after_construction_is_named(tmp_path):
    tifffile.imwrite(tmp_path / "secret.tif", np.ones((12, 16, 3), np.uint8), photometric="rgb")
    image_dir = write_region(tmp_path / "data", np.zeros((12, 16, 3), np.uint8), photometric="rgb")
    ld = SequenceDataLoader(YEARS, table(), image_dir, device="cpu", batch_size=1)
    link = os.path.join(image_dir, "2017", "7.tif")
    os.remove(link)
    os.symlink(tmp_path / "secret.tif", link)
    with pytest.raises(DecodeError, match=r"2017.7\.tif: cannot decode \(it changed since the loader was built: "
                                          r".*resolves to .*secret\.tif, outside image_dir"):
        ld[0]
