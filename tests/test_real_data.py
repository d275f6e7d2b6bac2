"""Real Dynamic World and Sentinel-2 exports: many bands, 16-bit and float samples, class maps,
planar and signed files on the slow path, and augmentation that is one transform per sequence."""

import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from dalidw import DataError, DecodeError, SequenceDataLoader, SlowPathWarning
from dalidw.augment import transform
from dalidw.synth import GEOTIFF_TAGS

from .conftest import YEARS, make_dataset, nearest_resize, reference_resize, tile_crops

#: Largest difference from the reference, relative to the value range: DALI resamples in float32.
RTOL = 2e-5


def loader(ds, **kw):
    options = {"device": "cpu", "batch_size": 5, "dim": (24, 32), "shuffle": False, **kw}
    return SequenceDataLoader(YEARS, ds.table, ds.image_dir, **options)


def reference(ds, tile, dim, *, bands, divisor, mean=0.0, std=1.0):
    """float64 (T, H, W, C): crop, pick bands, resize (linear), divide, standardize."""
    crops = tile_crops(ds, tile, YEARS)
    frames = [reference_resize(c[..., list(bands)].astype(np.float64), dim) / divisor for c in crops]
    return (np.stack(frames) - np.asarray(mean)) / np.asarray(std)


CASES = [
    # bands in the file, sample type, compression, bands picked, divisor with normalize=True
    pytest.param(4, "uint16", "tiled", [0, 1, 2, 3], 65535.0, id="4-band uint16 tiled"),
    pytest.param(13, "uint16", "deflate", [3, 2, 1], 65535.0, id="13-band uint16 deflate, RGB picked"),
    pytest.param(9, "float32", "lzw", [8, 0, 4, 1, 6], 1.0, id="9-band float32 lzw, any order"),
    pytest.param(1, "float32", "raw", [0], 1.0, id="1-band float32 raw"),
    pytest.param(6, "uint8", "tiled", [5], 255.0, id="6-band uint8 tiled, one picked"),
    pytest.param(2, "int16", "deflate", [1, 0], 32767.0, id="2-band int16 (slow path)"),
]


@pytest.mark.parametrize("n_bands, dtype, layout, bands, divisor", CASES)
def test_picked_bands_match_the_reference(tmp_path, n_bands, dtype, layout, bands, divisor):
    ds = make_dataset(tmp_path, bands=n_bands, dtype=dtype, layout=layout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPathWarning)
        ld = loader(ds, bands=bands)
    assert ld.n_channels == len(bands)
    span = 1.0 if dtype == "float32" else np.iinfo(dtype).max / divisor
    for index in range(len(ld)):
        x, _ = ld[index]
        assert x.shape[-1] == len(bands) and x.dtype == np.float32
        for k, tile in enumerate(ld.tile_ids(index)):
            expected = reference(ds, tile, ld.dim, bands=bands, divisor=divisor)
            np.testing.assert_allclose(x[k], expected, atol=RTOL * span, rtol=0, err_msg=f"tile {tile}")


def test_float_images_are_kept_as_they_are_unless_scale_is_given(tmp_path):
    ds = make_dataset(tmp_path, bands=9, dtype="float32", layout="tiled")
    tile = loader(ds, bands=[0]).tile_ids(0)[0]
    kept = loader(ds, bands=[0])[0][0][0]
    scaled = loader(ds, bands=[0], scale=0.5)[0][0][0]
    np.testing.assert_allclose(kept, reference(ds, tile, (24, 32), bands=[0], divisor=1.0), atol=RTOL)
    np.testing.assert_allclose(scaled, 2 * kept, atol=RTOL)


def test_sentinel_reflectance_is_scaled_and_standardized_per_band(tmp_path):
    ds = make_dataset(tmp_path, bands=5, dtype="uint16", layout="tiled")
    mean, std = [0.1, 0.2, 0.3], [0.5, 1.0, 2.0]
    ld = loader(ds, bands=[4, 2, 0], scale=10000, mean=mean, std=std)
    x, _ = ld[1]
    for k, tile in enumerate(ld.tile_ids(1)):
        expected = reference(ds, tile, ld.dim, bands=[4, 2, 0], divisor=10000.0, mean=mean, std=std)
        np.testing.assert_allclose(x[k], expected, atol=1e-4, rtol=0)


def test_nearest_never_invents_a_class_id(tmp_path):
    ds = make_dataset(tmp_path, bands=1, classes=9, layout="tiled")
    ld = loader(ds, n_channels=1, interpolation="nearest", normalize=False, dim=(37, 23))
    for index in range(len(ld)):
        x, _ = ld[index]
        for k, tile in enumerate(ld.tile_ids(index)):
            crops = tile_crops(ds, tile, YEARS)
            for f, crop in enumerate(crops):
                assert set(np.unique(x[k, f])) <= set(np.unique(crop).astype(np.float32))
                np.testing.assert_array_equal(x[k, f], nearest_resize(crop, ld.dim).astype(np.float32))
    linear = loader(ds, n_channels=1, normalize=False, dim=(37, 23))[0][0]
    assert not np.array_equal(linear, np.round(linear)), "linear resizing of a class map blends ids"


@pytest.mark.parametrize("tile_size, dim", [((16, 48), (24, 24)), ((48, 36), (24, 24)), ((30, 50), (20, 20))])
def test_nearest_takes_the_exact_pixel_where_an_output_centre_falls_on_a_pixel_edge(tmp_path, tile_size, dim):
    # 16 -> 24 rows: output row 1's centre maps to input 1.5 * 16 / 24 = 1.0 exactly, an edge; floor
    # takes input row 1, and so must every device (float rounding may land either side)
    ds = make_dataset(tmp_path, bands=1, classes=9, layout="tiled", tile_size=tile_size)
    ld = loader(ds, n_channels=1, interpolation="nearest", normalize=False, dim=dim, augment=False)
    for index in range(len(ld)):
        x, _ = ld[index]
        for k, tile in enumerate(ld.tile_ids(index)):
            for f, crop in enumerate(tile_crops(ds, tile, YEARS)):
                np.testing.assert_array_equal(x[k, f], nearest_resize(crop, ld.dim).astype(np.float32))


def test_one_hot_has_one_class_per_pixel_where_the_map_says(tmp_path):
    ds = make_dataset(tmp_path, bands=3, classes=9, layout="deflate")
    ld = loader(ds, bands=[2], num_classes=9, dim=(20, 20))
    assert ld.n_channels == 9 and ld.interpolation == "nearest"
    x, _ = ld[0]
    assert x.shape[-1] == 9
    np.testing.assert_array_equal(x.sum(axis=-1), 1.0)
    for k, tile in enumerate(ld.tile_ids(0)):
        for f, crop in enumerate(tile_crops(ds, tile, YEARS)):
            ids = nearest_resize(crop[..., 2:3], ld.dim)[..., 0]
            np.testing.assert_array_equal(x[k, f].argmax(axis=-1), ids)


def test_class_ids_beyond_num_classes_name_the_file(tmp_path):
    ds = make_dataset(tmp_path, bands=1, classes=12, layout="raw")
    ld = loader(ds, n_channels=1, num_classes=9)
    message = r"Images.\d{4}.1[01]\.tif: cannot decode \(holds class id \d+, outside num_classes=9"
    with pytest.raises(DecodeError, match=message):
        ld[0]


def test_the_slow_path_gives_the_same_batches_as_dali(tmp_path, monkeypatch):
    ds = make_dataset(tmp_path, bands=4, dtype="uint16", layout="tiled")
    fast = loader(ds, bands=[3, 1])
    monkeypatch.setattr("dalidw.validate.ImageInfo.slow_path_reason", lambda self: "forced by the test")
    with pytest.warns(SlowPathWarning, match="forced by the test"):
        slow = loader(ds, bands=[3, 1])
        x_slow, _ = slow[0]
    x_fast, _ = fast[0]
    np.testing.assert_array_equal(x_slow, x_fast)
    assert fast.slow_path == {}


def test_a_layout_that_dali_decodes_wrong_takes_the_slow_path_with_the_right_pixels(tmp_path, monkeypatch):
    ds = make_dataset(tmp_path, bands=4, dtype="uint16", layout="deflate", regions=3)
    honest = loader(ds, bands=[3, 1])
    right = [honest[index][0] for index in range(len(honest))]

    def wrong_run(self, encoded):  # a decoder that is off by one grey level on every file, silently
        return [image + 1 for image in honest_run(self, encoded)]

    from dalidw.decode import DaliDecoder

    honest_run = DaliDecoder.run
    monkeypatch.setattr(DaliDecoder, "run", wrong_run)
    with pytest.warns(SlowPathWarning) as caught:
        ld = loader(ds, bands=[3, 1])
        got = [ld[index][0] for index in range(len(ld))]
    for x, expected in zip(got, right, strict=True):
        np.testing.assert_array_equal(x, expected)
    said = [str(w.message) for w in caught if "other pixels" in str(w.message)]
    assert len(said) == 1, said  # once for the layout, not once per region
    assert re.search(r"other pixels than tifffile for \S+\.tif, stored as ADOBE_DEFLATE, predictor 1, uint16, "
                     r"4 band\(s\)", said[0]), said[0]
    assert sorted(ld.slow_path) == sorted(str(p) for p in ld.images.paths.ravel())


def test_dali_output_is_compared_with_tifffile_once_per_layout(tmp_path, monkeypatch):
    import dalidw.decode

    ds = make_dataset(tmp_path, bands=3, layout="tiled", regions=3)
    calls = []
    real = dalidw.decode.read_with_tifffile
    monkeypatch.setattr(dalidw.decode, "read_with_tifffile", lambda path: calls.append(path) or real(path))
    ld = loader(ds)
    for index in range(len(ld)):
        ld[index]
    assert ld.decoded_images == len(YEARS) * 3 and len(calls) == 1 and ld.slow_path == {}


def test_planar_files_take_the_slow_path_with_one_warning_and_the_same_pixels(tmp_path):
    contig = make_dataset(tmp_path / "contig", bands=5, dtype="uint16", layout="deflate", seed=3)
    planar = make_dataset(tmp_path / "planar", bands=5, dtype="uint16", layout="deflate", seed=3, planar=True)
    with pytest.warns(SlowPathWarning) as caught:
        slow = loader(planar, bands=[0, 4, 2])
    assert len(caught) == 1 and "planar-separate bands" in str(caught[0].message)
    assert len(slow.slow_path) == len(YEARS) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowPathWarning)  # said once: not again while decoding
        for index in range(len(slow)):
            np.testing.assert_array_equal(slow[index][0], loader(contig, bands=[0, 4, 2])[index][0])


def test_geotiff_tags_do_not_flood_the_console(tmp_path):
    ds = make_dataset(tmp_path, bands=4, dtype="uint16", layout="tiled", extratags=GEOTIFF_TAGS)
    code = ("import pandas as pd; from dalidw import SequenceDataLoader; "
            f"t = pd.read_pickle({str(tmp_path / 't.pkl')!r}); "
            f"ld = SequenceDataLoader({YEARS}, t, {ds.image_dir!r}, device='cpu', bands=[0, 1, 2, 3]); "
            "[ld[i] for i in range(len(ld))]; print('ok')")
    ds.table.to_pickle(tmp_path / "t.pkl")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok" and run.stderr.strip() == ""


@pytest.mark.parametrize("kw, message", [
    ({"bands": [0, 1], "n_channels": 3}, "`n_channels` follows `bands`"),
    ({"bands": []}, "Expected `bands` to be a non-empty list"),
    ({"bands": [-1]}, "Expected `bands`"),
    ({"num_classes": 1}, "Expected `num_classes` to be an int >= 2"),
    ({"num_classes": 9, "n_channels": 3}, "one-hot encodes a single-band class map"),
    ({"num_classes": 9, "bands": [0], "interpolation": "linear"}, "only interpolation='nearest'"),
    ({"num_classes": 9, "bands": [0], "mean": 0.5}, "do not apply"),
    ({"interpolation": "cubic"}, "Expected `interpolation`"),
    ({"scale": 100, "normalize": False}, "`scale` divides the values when normalizing"),
    ({"scale": 0}, "Expected `scale` to be a positive number"),
    ({"mean": [0.1, 0.2]}, "Expected `mean` to be a number or 3 finite numbers"),
    ({"std": 0}, "Expected `std` to be positive"),
    ({"augment": "mixup"}, "Expected `augment`"),
    ({"augment": True, "dim": (24, 32)}, "augment='rot90' needs a square `dim`"),
])
def test_bad_channel_options_are_named_before_any_file_is_read(tmp_path, kw, message):
    ds = make_dataset(tmp_path)
    with pytest.raises(ValueError, match=message):
        SequenceDataLoader(YEARS, ds.table, str(tmp_path / "no-such-dir"), device="cpu", **kw)


def test_bands_beyond_the_file_and_classes_of_float_data_are_data_errors(tmp_path):
    ds = make_dataset(tmp_path / "a", bands=4, dtype="uint16")
    with pytest.raises(DataError, match=r"has 4 band\(s\); bands=\[1, 4\] asks for band 4"):
        loader(ds, bands=[1, 4])
    fl = make_dataset(tmp_path / "b", bands=1, dtype="float32")
    with pytest.raises(DataError, match="samples are float32; num_classes needs integer class ids"):
        loader(fl, num_classes=4)


# -- augmentation -----------------------------------------------------------------------------

def matching_transforms(plain: np.ndarray, augmented: np.ndarray) -> set[int]:
    """The codes c with transform(plain, c) equal to augmented (frames resized to a square)."""
    return {c for c in range(8) if np.allclose(transform(plain, c), augmented, atol=1e-5)}


def test_augmentation_is_one_transform_for_every_frame_of_a_sequence(tmp_path):
    ds = make_dataset(tmp_path, tiles_per_region=12)
    options = {"dim": (20, 20), "shuffle": True, "random_seed": 7, "batch_size": 8}
    plain, augmented = loader(ds, **options), loader(ds, augment=True, **options)
    seen = set()
    for index in range(len(plain)):
        assert list(plain.tile_ids(index)) == list(augmented.tile_ids(index))
        x0, y0 = plain[index]
        x1, y1 = augmented[index]
        np.testing.assert_array_equal(y0, y1)
        for k in range(len(x0)):
            assert not np.allclose(x0[k, 0], x0[k, 1], atol=1e-3), "frames must differ to tell transforms apart"
            per_frame = [matching_transforms(x0[k, f], x1[k, f]) for f in range(len(YEARS))]
            assert len(per_frame[0]) == 1, "a random smooth tile has no symmetry of its own"
            assert all(m == per_frame[0] for m in per_frame), f"frames of one sample differ in transform: {per_frame}"
            seen |= per_frame[0]
    assert len(seen) >= 5, f"24 tiles should meet most of the 8 transforms, saw {sorted(seen)}"


def test_augmentation_is_reproducible_and_changes_with_the_epoch(tmp_path):
    ds = make_dataset(tmp_path)
    options = {"dim": (20, 20), "augment": "flip", "random_seed": 3, "shuffle": False}
    a, b = loader(ds, **options), loader(ds, **options)
    np.testing.assert_array_equal(a[0][0], b[0][0])
    first = a[0][0]
    changed = False
    for _ in range(4):
        a.on_epoch_end()
        changed |= not np.array_equal(a[0][0], first)
    assert changed
    x0 = loader(ds, dim=(20, 20), shuffle=False)[0][0]
    for k in range(len(x0)):
        assert matching_transforms(x0[k, 0], first[k, 0]) <= {0, 4, 6, 2}, "flip alone never turns by a quarter"


def test_last_image_targets_get_the_transform_of_their_sequence(tmp_path):
    ds = make_dataset(tmp_path)
    options = {"dim": (16, 16), "target": "last-image", "random_seed": 5}
    x0, y0 = loader(ds, **options)[0]
    x1, y1 = loader(ds, augment=True, **options)[0]
    for k in range(len(x0)):
        assert matching_transforms(x0[k, 0], x1[k, 0]) == matching_transforms(y0[k], y1[k])


def test_a_mixed_decoder_that_cannot_start_falls_back_to_dalis_cpu_decoder(tmp_path):
    """Where the GPU decoder cannot be set up (here: no GPU at all), regions are still decoded by
    DALI, on the CPU, with a warning, and give the same pixels."""
    from dalidw.decode import RegionDecoder, read_with_tifffile

    make_dataset(tmp_path, bands=4, dtype="uint16")
    with pytest.warns(RuntimeWarning, match="'mixed' image decoder failed"):
        decoder = RegionDecoder(dtype=np.uint16, device="gpu", device_id=None)
    assert decoder.backend == "cpu"
    paths = sorted(str(p) for p in tmp_path.glob("Images/*/*.tif"))
    for path, image in zip(paths, decoder.decode(paths, [(96, 112)] * len(paths))):
        np.testing.assert_array_equal(image, read_with_tifffile(path))
    assert decoder.slow_path == {}
