"""The TensorFlow path: dataset() gives, epoch after epoch, the batches of loader[i] (partial last
batch included), and model.fit trains on it."""

import numpy as np
import pytest

from dalidw import SequenceDataLoader

from .conftest import YEARS

tf = pytest.importorskip("tensorflow")


def loader(ds, **kw):
    options = {"device": "cpu", "batch_size": 4, "dim": (16, 24), **kw}
    return SequenceDataLoader(YEARS, ds.table, ds.image_dir, **options)


def assert_dataset_matches_loader(ld, epochs: int = 2, channels: int | None = None):
    """dataset()'s epoch e, batch i equals loader[i] after e calls of on_epoch_end(), bit for bit."""
    batches = len(ld)
    got = list(ld.dataset().take(epochs * batches).as_numpy_iterator())
    for epoch in range(epochs):
        for i in range(batches):
            x, y = got[epoch * batches + i]
            ex, ey = ld[i]
            assert x.shape == ex.shape and y.shape == ey.shape, (epoch, i)
            if channels is not None:
                assert x.shape[-1] == channels
            np.testing.assert_array_equal(x, ex)
            np.testing.assert_array_equal(y, ey)
        ld.on_epoch_end()


@pytest.mark.parametrize("target", ["target", ["target", "target2"], "last-image"])
def test_dataset_equals_loader_batches_over_two_epochs(dataset, target):
    assert_dataset_matches_loader(loader(dataset, target=target))


def test_dataset_can_start_at_a_later_epoch(dataset):
    ld = loader(dataset)
    x, _ = next(ld.dataset(start_epoch=3).as_numpy_iterator())
    for _ in range(3):
        ld.on_epoch_end()
    np.testing.assert_array_equal(x, ld[0][0])


def test_element_spec_is_float32_with_known_frame_shape(dataset):
    spec = loader(dataset).dataset().element_spec
    assert spec[0].dtype == tf.float32 and spec[1].dtype == tf.float32
    assert spec[0].shape[1:] == (len(YEARS), 16, 24, 3)


def test_model_fit_trains_a_tiny_convlstm(dataset):
    keras = pytest.importorskip("keras")
    ld = loader(dataset, batch_size=5)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((len(YEARS), 16, 24, 3)),
        keras.layers.ConvLSTM2D(4, 3, padding="same"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(ld.dataset(), steps_per_epoch=len(ld), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert all(np.isfinite(history.history["loss"]))
    assert model.predict(ld[0][0], verbose=0).shape == (5, 1)


@pytest.mark.parametrize("n_bands, dtype, options", [
    (5, "uint16", {"bands": [4, 0], "scale": 10000, "mean": [0.1, 0.2], "std": [2.0, 0.5], "augment": True}),
    (9, "float32", {"bands": [8, 1, 2], "augment": "rot90"}),
    (1, "uint8", {"num_classes": 6, "augment": "flip", "target": "last-image"}),
])
def test_dataset_equals_loader_batches_for_real_data_options(tmp_path, n_bands, dtype, options):
    from .conftest import make_dataset

    ds = make_dataset(tmp_path, bands=n_bands, dtype=dtype, classes=6 if "num_classes" in options else 0)
    channels = options.get("num_classes") or len(options.get("bands", [0]))
    assert_dataset_matches_loader(loader(ds, dim=(16, 16), **options), channels=channels)


@pytest.mark.parametrize("box, options", [
    ((20, 30), {}),
    ((20, 30), {"target": "last-image", "augment": "flip"}),
    ((25, 25), {"augment": True, "target": ["target", "target2"], "dim": (16, 16)}),
    ((20, 30), {"augment": True, "dim": (16, 16)}),  # quarter turns of 20x30 boxes, turned in the graph
])
def test_uniform_boxes_give_the_same_data_through_both_paths(tmp_path, box, options):
    from .conftest import make_dataset

    ds = make_dataset(tmp_path, tile_size=box, tiles_per_region=5)
    ld = loader(ds, **{"dim": (16, 24), **options})
    assert ld.uniform_box == box
    assert_dataset_matches_loader(ld)


def test_dataset_is_the_dali_dataset_itself_with_an_open_batch_dimension(dataset):
    ld = loader(dataset, batch_size=4)
    ds = ld.dataset()
    assert type(ds).__name__ == "_DALIDatasetWithInputsImpl" or "DALIDataset" in type(ds).__name__
    assert ds.element_spec[0].shape[0] is None and ds.element_spec[1].shape.as_list() == [None]
    sizes = [len(x) for x, _ in ds.take(len(ld)).as_numpy_iterator()]
    assert sizes == list(ld.batch_sizes) and sizes[-1] < 4, "the last batch is smaller, not padded"


def test_as_pydataset_lets_keras_fit_run_the_numpy_path_epoch_after_epoch(dataset):
    keras = pytest.importorskip("keras")
    ld = loader(dataset, batch_size=5)
    first_epoch = [list(ld.tile_ids(i)) for i in range(len(ld))]
    data = ld.as_pydataset()
    assert len(data) == len(ld)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((len(YEARS), 16, 24, 3)), keras.layers.ConvLSTM2D(2, 3, padding="same"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(data, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and all(np.isfinite(history.history["loss"]))
    # Keras 3 calls on_epoch_end after each epoch, and once before the first
    assert ld.epoch == 3
    assert [list(ld.tile_ids(i)) for i in range(len(ld))] != first_epoch
    np.testing.assert_array_equal(data[1][0], ld[1][0])
