"""Batches as numpy: equal to an independent numpy reference (tifffile's pixels, numpy slicing,
a separable resampler written here) on several TIFF layouts; targets aligned with tile_ids;
every tile once per epoch; the options of the constructor honoured."""

import os

import numpy as np
import pytest
import tifffile

from dalidw import DecodeError, DeviceUnavailableError, SequenceDataLoader

from .conftest import LAYOUTS, YEARS, make_dataset, reference_resize, reference_sequence, reference_target

#: Largest difference allowed from the reference, in normalized units: DALI resamples in float32.
ATOL = 2e-5


def loader(ds, **kw):
    options = {"device": "cpu", "batch_size": 4, "dim": (24, 32), **kw}
    return SequenceDataLoader(YEARS, ds.table, ds.image_dir, **options)


def assert_batch_matches_reference(ds, ld, index, *, n_channels=3, scale=1 / 255, atol=ATOL, target="target"):
    x, y = ld[index]
    ids = ld.tile_ids(index)
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.shape == (len(ids), len(YEARS), *ld.dim, n_channels)
    for k, tile in enumerate(ids):
        expected = reference_sequence(ds, tile, YEARS, ld.dim, n_channels=n_channels, scale=scale)
        np.testing.assert_allclose(x[k], expected, atol=atol, rtol=0, err_msg=f"tile {tile}")
        if target == "target":
            assert y[k] == pytest.approx(reference_target(ds, tile, YEARS), abs=1e-6)


def test_reference_resampler_agrees_with_pil_when_enlarging():
    from PIL import Image

    image = np.random.default_rng(1).integers(0, 256, (13, 17, 1)).astype(np.float32)
    pil = np.asarray(Image.fromarray(image[..., 0], mode="F").resize((40, 30), Image.BILINEAR))
    np.testing.assert_allclose(reference_resize(image, (30, 40))[..., 0], pil, atol=1e-3)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_batches_match_the_reference_on_every_layout(tmp_path, layout):
    ds = make_dataset(tmp_path, layout=layout)
    ld = loader(ds)
    for index in range(len(ld)):
        assert_batch_matches_reference(ds, ld, index)


@pytest.mark.parametrize("dim", [(64, 64), (20, 48), (48, 20), (8, 8)])
def test_non_square_and_shrinking_dims_keep_height_and_width_apart(dataset, dim):
    ld = loader(dataset, dim=dim)
    assert_batch_matches_reference(dataset, ld, 0)
    assert_batch_matches_reference(dataset, ld, len(ld) - 1)


def test_gray_from_rgb_is_itu_601_luma(dataset):
    ld = loader(dataset, n_channels=1)
    # the decoder's luma may round one level away from PIL's "L"
    assert_batch_matches_reference(dataset, ld, 0, n_channels=1, atol=1 / 255 + ATOL)


def test_gray_images_give_one_channel(tmp_path):
    ds = make_dataset(tmp_path, bands=1, layout="deflate")
    assert_batch_matches_reference(ds, loader(ds, n_channels=1), 1, n_channels=1)


def test_uint16_images_are_scaled_by_65535(tmp_path):
    ds = make_dataset(tmp_path, dtype="uint16", layout="tiled")
    assert_batch_matches_reference(ds, loader(ds), 0, scale=1 / 65535)


def test_normalize_false_keeps_raw_values(dataset):
    ld = loader(dataset, normalize=False)
    assert_batch_matches_reference(dataset, ld, 0, scale=1.0, atol=255 * ATOL)
    assert ld[0][0].max() > 1.5


def test_partial_last_batch(dataset):
    ld = loader(dataset, batch_size=4)
    assert ld.n_tiles == 14 and len(ld) == 4
    x, y = ld[3]
    assert x.shape[0] == y.shape[0] == len(ld.tile_ids(3)) == 2
    assert_batch_matches_reference(dataset, ld, 3)
    with pytest.raises(IndexError):
        ld[4]
    assert np.array_equal(ld[-1][0], x)


def test_every_tile_once_per_epoch_and_a_new_order_each_epoch(dataset):
    ld = loader(dataset, batch_size=3)
    orders = []
    for _ in range(3):
        ids = np.concatenate([ld.tile_ids(i) for i in range(len(ld))])
        assert sorted(ids.tolist()) == sorted(dataset.table.tile_id.unique().tolist())
        orders.append(ids.tolist())
        ld.on_epoch_end()
    assert orders[0] != orders[1] != orders[2]


def test_same_seed_same_order_and_y_follows_tile_ids(dataset):
    a, b = loader(dataset, random_seed=7), loader(dataset, random_seed=7)
    for i in range(len(a)):
        assert a.tile_ids(i).tolist() == b.tile_ids(i).tolist()
    x, y = a[1]
    assert y.tolist() == pytest.approx([reference_target(dataset, t, YEARS) for t in a.tile_ids(1)])


def test_shuffle_false_keeps_the_table_order(dataset):
    ld = loader(dataset, shuffle=False)
    last = dataset.table[dataset.table.label_id == YEARS[-1]]
    ids = np.concatenate([ld.tile_ids(i) for i in range(len(ld))])
    assert ids.tolist() == last.tile_id.tolist()


def test_wide_format_and_several_targets(dataset):
    wide = dataset.table[dataset.table.label_id == YEARS[-1]].drop(columns="label_id")
    ld = SequenceDataLoader(YEARS, wide, dataset.image_dir, dim=(16, 16), batch_size=5,
                            target=["target", "target2"], device="cpu")
    x, y = ld[0]
    assert y.shape == (5, 2)
    for k, tile in enumerate(ld.tile_ids(0)):
        assert y[k].tolist() == pytest.approx([reference_target(dataset, tile, YEARS),
                                               reference_target(dataset, tile, YEARS, "target2")])


def test_last_image_predicts_the_last_frame_from_the_others(dataset):
    ld = loader(dataset, target="last-image")
    x, y = ld[0]
    assert x.shape == (4, len(YEARS) - 1, 24, 32, 3) and y.shape == (4, 24, 32, 3)
    for k, tile in enumerate(ld.tile_ids(0)):
        expected = reference_sequence(dataset, tile, YEARS, (24, 32))
        np.testing.assert_allclose(x[k], expected[:-1], atol=ATOL)
        np.testing.assert_allclose(y[k], expected[-1], atol=ATOL)


def test_a_tiff_that_fails_to_decode_names_its_path(dataset):
    path = os.path.join(dataset.image_dir, "2017", "10.tif")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    with tifffile.TiffFile(path) as tif:
        offsets = tif.pages.first.dataoffsets
    for offset in offsets:  # wreck every compressed tile, keep the header
        data[offset : offset + 64] = b"\xff" * 64
    with open(path, "wb") as f:
        f.write(bytes(data))
    ld = loader(dataset, shuffle=False, batch_size=14)
    with pytest.raises(DecodeError, match=r"2017.10\.tif: cannot decode"):
        ld[0]


def test_regions_are_decoded_once_while_they_fit_the_cache(dataset):
    ld = loader(dataset, batch_size=3)
    for _ in range(2):
        list(ld)
        ld.on_epoch_end()
    assert ld.decoded_images == 2 * len(YEARS)


def region_bytes(ds) -> int:
    """Bytes the cache keeps of the largest region: its tiles of every label, cut once, or its whole
    stack where its tiles overlap so much that they would hold more."""
    layout = loader(ds).feed.store.layout
    return max(layout.nbytes(r) for r in range(len(layout.stack_shapes)))


def test_the_cache_stays_under_its_bound(dataset):
    one_region = region_bytes(dataset)  # the cache keeps a region's tiles of every year together
    ld = loader(dataset, batch_size=3, cache_bytes=one_region + 1)
    first = ld[0][0]
    list(ld)
    assert 0 < ld.cached_bytes <= one_region + 1
    assert ld.decoded_images > 2 * len(YEARS)
    np.testing.assert_array_equal(ld[0][0], first)


def test_no_cache_gives_the_same_batches(dataset):
    a, b = loader(dataset), loader(dataset, cache_bytes=0)
    np.testing.assert_array_equal(a[2][0], b[2][0])


def test_gpu_without_a_gpu_is_a_clear_error(dataset, monkeypatch):
    monkeypatch.setattr("dalidw.devices.gpu_count", lambda: 0)
    with pytest.raises(DeviceUnavailableError, match="DALI sees no GPU"):
        loader(dataset, device="gpu")


def test_auto_runs_on_the_cpu_without_a_gpu(dataset, monkeypatch):
    monkeypatch.setattr("dalidw.devices.gpu_count", lambda: 0)
    assert loader(dataset, device="auto").device == "cpu"


def test_auto_takes_the_gpu_dali_sees_without_asking_tensorflow(monkeypatch):
    from dalidw.devices import resolve_device

    def no_tensorflow():
        raise AssertionError("device='auto' asked TensorFlow")

    monkeypatch.setattr("dalidw.devices.gpu_count", lambda: 1)
    monkeypatch.setattr("dalidw.devices.tensorflow_gpu_count", no_tensorflow)
    assert resolve_device("auto") == ("gpu", 0)


def test_a_tensorflow_without_a_gpu_runs_an_auto_gpu_loaders_dataset_on_the_cpu():
    from dalidw.devices import dataset_device

    with pytest.warns(RuntimeWarning, match=r"DALI sees a GPU but TensorFlow sees no GPU.*tensorflow\[and-cuda\]"):
        assert dataset_device("gpu", 0, device_fixed=False) == "cpu"
    with pytest.raises(DeviceUnavailableError, match=r"TensorFlow sees no GPU.*device='cpu'"):
        dataset_device("gpu", 0, device_fixed=True)
    assert dataset_device("gpu", 1, device_fixed=True) == "gpu"
    assert dataset_device("cpu", 0, device_fixed=False) == "cpu"


def test_verify_decode_accepts_sound_files(dataset):
    a, b = loader(dataset), loader(dataset, verify_decode=True)
    np.testing.assert_array_equal(a[0][0], b[0][0])


def test_verify_decode_compares_every_image_and_finds_what_the_layout_check_cannot(dataset, monkeypatch):
    """A decoder right on the first image of a layout (the one the layout check compares) and off by
    one grey level on every later image: only ``verify_decode`` compares those, and refuses them."""
    from dalidw.decode import DaliDecoder

    honest, decoded = DaliDecoder.run, []

    def wrong_after_the_first(self, encoded):
        images = honest(self, encoded)
        out = [image if not decoded and k == 0 else image ^ 1 for k, image in enumerate(images)]
        decoded.extend(images)
        return out

    monkeypatch.setattr(DaliDecoder, "run", wrong_after_the_first)
    with pytest.raises(DecodeError, match="DALI's decoder and tifffile disagree on its pixels"):
        loader(dataset, verify_decode=True)[0]
    decoded.clear()
    loader(dataset)[0]  # without the audit the same decoder's later images go unseen


def test_an_all_black_image_is_not_mistaken_for_a_broken_one(dataset):
    path = os.path.join(dataset.image_dir, "2016", "10.tif")
    tifffile.imwrite(path, np.zeros((96, 112, 3), np.uint8), photometric="rgb", compression="zlib")
    ld = loader(dataset, shuffle=False, batch_size=14)
    x, _ = ld[0]
    first_of_region_10 = [k for k, t in enumerate(ld.tile_ids(0))
                          if dataset.table[dataset.table.tile_id == t].region_id.iloc[0] == 10][0]
    assert not x[first_of_region_10, 0].any() and x[first_of_region_10, 1].any()


def test_locality_decodes_each_image_once_per_epoch_with_a_cache_of_one_region(tmp_path):
    ds = make_dataset(tmp_path, regions=4, tiles_per_region=10)
    one_region = region_bytes(ds)
    options = {"batch_size": 8, "cache_bytes": one_region, "random_seed": 2}
    local = loader(ds, locality="auto", **options)
    spread = loader(ds, **options)
    assert local.locality == 1
    for ld in (local, spread):
        ids = [t for i in range(len(ld)) for t in ld.tile_ids(i)]
        assert sorted(ids) == sorted(ds.table.tile_id.unique())
        for i in range(len(ld)):
            ld[i]
    assert local.decoded_images == 4 * len(YEARS)
    assert spread.decoded_images > 2 * 4 * len(YEARS)


@pytest.mark.parametrize("kw, message", [
    ({"locality": 0}, "Expected `locality` to be a number of regions >= 1"),
    ({"locality": "near"}, "Expected `locality`"),
    ({"locality": 2, "shuffle": False}, "needs shuffle=True"),
])
def test_bad_locality_is_named(dataset, kw, message):
    with pytest.raises(ValueError, match=message):
        loader(dataset, **kw)


def test_tiles_of_one_size_go_as_whole_batches_and_still_match_the_reference(tmp_path):
    ds = make_dataset(tmp_path, tile_size=(30, 40), layout="deflate")
    ld = loader(ds)
    assert not ld.feed.spec.ragged and ld.feed.box() == (30, 40)
    for index in range(len(ld)):
        assert_batch_matches_reference(ds, ld, index)


def test_tiles_that_overlap_are_cut_from_the_kept_region_stack_and_match_the_reference(tmp_path):
    """A stride of half a tile: its tiles, cut once, would hold about four times the region's pixels,
    so the cache keeps the region's stack and slices each tile from it."""
    ds = make_dataset(tmp_path, tile_size=(40, 48), tiles_per_region=12, seed=4)
    table = ds.table.copy()
    for i, tile in enumerate(sorted(table.tile_id.unique())):  # a 3x4 grid with a stride of half a tile
        y, x = 20 * (i % 12 // 4), 16 * (i % 4)
        table.loc[table.tile_id == tile, "region_coordinates"] = f"({x}, {y}, {x + 48}, {y + 40})"
    ds.table = table
    ld = loader(ds, dim=(20, 24))
    assert ld.feed.store.layout.as_blocks == (False, False)
    for index in range(len(ld)):
        assert_batch_matches_reference(ds, ld, index)


def test_a_batch_is_cut_into_one_contiguous_buffer_the_caller_may_give(dataset):
    ld = loader(dataset, batch_size=5)
    buffer = ld.feed.new_frames(5)
    frames = ld.feed.inputs(0, 1, frames=buffer)["frames"]
    assert frames is buffer and frames.flags.c_contiguous
    assert frames.shape == (5, len(YEARS), *ld.feed.box(), 3)  # padded to the largest box of the table
    np.testing.assert_array_equal(ld.feed.run(ld.feed.inputs(0, 1, frames=buffer))[0], ld[1][0])


def test_run_ahead_gives_the_loaders_batches_step_after_step_and_out_of_order(dataset):
    from dalidw.runahead import RunAhead

    ld = loader(dataset, batch_size=4, augment="flip", dim=(16, 16))
    run = RunAhead(ld.feed, start_epoch=1)
    steps = [*range(2 * len(ld) + 1), 0, 5, 6]  # across two epochs, then back to the start, then a jump
    for step in steps:
        x, y = run(step)
        epoch, index = divmod(step, len(ld))
        ld.epoch = 1 + epoch
        want_x, want_y = ld[index]
        np.testing.assert_array_equal(x.as_array(), want_x, err_msg=f"step {step}")
        np.testing.assert_array_equal(y.as_array(), want_y, err_msg=f"step {step}")


def test_placement_lists_the_data_path_not_the_flags(dataset):
    from dalidw.pipeline import ARGUMENT_INPUTS, build_pipeline, placement

    ld = loader(dataset, augment=True, dim=(16, 16))
    nodes: list = []
    pipe = build_pipeline(ld.feed.spec, nodes=nodes)
    names = [name for name, _ in placement(nodes)]
    assert any("Slice" in n for n in names) and any("Resize" in n for n in names), names
    # the per-sample shapes and flags are arguments: they stay on the CPU on both devices
    assert not set(names) & set(ARGUMENT_INPUTS), names
    del pipe


def test_float32_regions_are_decoded_by_the_cpu_decoder_even_for_a_gpu_graph():
    from dalidw.decode import decode_backend

    # DALI 2.4's GPU decoder gives wrong float32 pixels without an error (bench/gpu_check.py shows it)
    assert decode_backend(np.dtype("float32"), "gpu") == "cpu"
    assert decode_backend(np.dtype("uint8"), "gpu") == decode_backend(np.dtype("uint16"), "gpu") == "mixed"
    assert decode_backend(np.dtype("uint16"), "cpu") == "cpu"


def test_the_cut_the_gpu_runs_gives_the_host_cuts_frames(tmp_path):
    """The device store cuts with each region's own per-box-size gathers (the code the GPU runs,
    here on NumPy arrays); the host store copies block rows one by one: the same frames."""
    from dalidw.regions import cut_frames

    ds = make_dataset(tmp_path, tile_size=(30, 40), tiles_per_region=9)
    ld = loader(ds, batch_size=7)
    store = ld.feed.store
    for index in range(len(ld)):
        positions = ld.feed.positions(0, index)
        tiles = store.tiles(store.layout.regions[positions])
        host = cut_frames(store.layout, tiles, positions, ld.feed.new_frames(len(positions)))
        grouped = np.zeros_like(host)
        slots = np.arange(len(positions))
        for region, kept in tiles.items():
            mine = store.layout.regions[positions] == region
            kept.cut(store.layout, positions[mine], slots[mine], grouped)
        np.testing.assert_array_equal(grouped, host)


class FakeTensorFlowConfig:
    """Just enough of ``tf.config`` for ``share_tensorflow_gpu``: one GPU, initialized or not, with a
    memory limit or not."""

    def __init__(self, initialized: bool, limit: bool, growth: bool = False):
        self.initialized, self.limit, self.growth = initialized, limit, growth
        self.experimental = self

    def list_physical_devices(self, kind):
        return [type("Gpu", (), {"name": "/physical_device:GPU:0"})()]

    def get_logical_device_configuration(self, gpu):
        return ["limit"] if self.limit else None

    def set_memory_growth(self, gpu, on):
        if self.limit:
            raise ValueError("Cannot set memory growth on device when virtual devices configured")
        if self.initialized:
            raise RuntimeError("Physical devices cannot be modified after being initialized")
        self.growth = on

    def get_memory_growth(self, gpu):
        return self.growth


def test_tensorflow_gives_the_gpu_to_share_or_says_what_to_call_first(monkeypatch):
    from types import SimpleNamespace

    from dalidw.devices import share_tensorflow_gpu

    monkeypatch.delenv("TF_FORCE_GPU_ALLOW_GROWTH", raising=False)
    fresh = FakeTensorFlowConfig(initialized=False, limit=False)
    share_tensorflow_gpu(SimpleNamespace(config=fresh))
    assert fresh.growth, "memory growth is switched on before TensorFlow takes the GPU"
    share_tensorflow_gpu(SimpleNamespace(config=FakeTensorFlowConfig(initialized=True, limit=True)))  # a budget
    share_tensorflow_gpu(SimpleNamespace(config=FakeTensorFlowConfig(initialized=True, limit=False, growth=True)))
    with pytest.raises(DeviceUnavailableError, match=r"TensorFlow already holds the memory of .*GPU:0.*Build the "
                                                     r"loader first"):
        share_tensorflow_gpu(SimpleNamespace(config=FakeTensorFlowConfig(initialized=True, limit=False)))
    monkeypatch.setenv("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    share_tensorflow_gpu(SimpleNamespace(config=FakeTensorFlowConfig(initialized=True, limit=False)))
