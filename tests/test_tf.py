"""The TensorFlow path: dataset() gives, epoch after epoch, the batches of loader[i] (partial last
batch included), and model.fit trains on it."""

import os
import subprocess
import sys

import numpy as np
import pytest

from dalidw import SequenceDataLoader

from .conftest import YEARS

tf = pytest.importorskip("tensorflow")


def loader(ds, **kw):
    options = {"device": "cpu", "batch_size": 4, "dim": (16, 24), **kw}
    return SequenceDataLoader(YEARS, ds.table, ds.image_dir, **options)


def assert_dataset_matches_loader(ld, epochs: int = 2, channels: int | None = None, plugin: bool = False):
    """dataset()'s epoch e, batch i equals loader[i] after e calls of on_epoch_end(), bit for bit.
    ``plugin``: the dataset of DALI's TensorFlow plugin instead (what a GPU loader's dataset() runs)."""
    from dalidw.tf import make_dataset

    batches = len(ld)
    dataset = make_dataset(ld.feed, plugin=True) if plugin else ld.dataset()
    got = list(dataset.take(epochs * batches).as_numpy_iterator())
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
@pytest.mark.parametrize("plugin", [False, True], ids=["runahead", "plugin"])
def test_dataset_equals_loader_batches_over_two_epochs(dataset, target, plugin):
    assert_dataset_matches_loader(loader(dataset, target=target), plugin=plugin)


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
    assert not ld.feed.spec.ragged and ld.feed.box() == box
    assert_dataset_matches_loader(ld)
    assert_dataset_matches_loader(ld.shard(0, 1), plugin=True)


def test_dataset_has_an_open_batch_dimension_and_a_smaller_last_batch(dataset):
    ld = loader(dataset, batch_size=4)
    ds = ld.dataset()
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
    assert ld.epoch == 2, "fit read epochs 0 and 1 and left the loader at the next one"
    assert [list(ld.tile_ids(i)) for i in range(len(ld))] != first_epoch
    np.testing.assert_array_equal(data[1][0], ld[1][0])


def fit_reads(ds, monkeypatch, epochs: int, **fit_and_start) -> dict:
    """{fit's epoch: the tile_ids of each batch it read} of model.fit over a fresh loader's PyDataset
    (with shuffle=False: Keras would otherwise read the batches of an epoch in its own random order);
    each batch read is checked against the loader's own batch of that epoch."""
    keras = pytest.importorskip("keras")
    from dalidw.keras_adapter import FeedBatches

    ld = loader(ds, batch_size=4, dim=(8, 8))
    check = loader(ds, batch_size=4, dim=(8, 8))
    reads: dict = {}
    fit_epoch = [None]
    real = FeedBatches.__getitem__

    def recording(self, index):
        x, y = real(self, index)
        if fit_epoch[0] is not None:
            reads.setdefault(fit_epoch[0], []).append(list(ld.table.tile_ids[ld.feed.positions(self.epoch, index)]))
            check.epoch = self.epoch
            np.testing.assert_array_equal(np.asarray(x), check[index][0])
        return x, y

    monkeypatch.setattr(FeedBatches, "__getitem__", recording)
    start = {"start_epoch": fit_and_start.pop("start_epoch")} if "start_epoch" in fit_and_start else {}
    model = keras.Sequential([keras.Input((len(YEARS), 8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    mark = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: fit_epoch.__setitem__(0, epoch))
    model.fit(ld.as_pydataset(**start), epochs=epochs, callbacks=[mark], shuffle=False, verbose=0, **fit_and_start)
    return reads


def epoch_tile_ids(ds, epoch: int) -> list:
    """The tile_ids of each batch of the loader's epoch ``epoch``, from loader.tile_ids."""
    ld = loader(ds, dim=(8, 8))
    for _ in range(epoch):
        ld.on_epoch_end()
    return [list(ld.tile_ids(i)) for i in range(len(ld))]


def test_fit_epoch_k_on_a_pydataset_reads_the_loaders_epoch_k(dataset, monkeypatch):
    reads = fit_reads(dataset, monkeypatch, epochs=3)
    assert reads == {k: epoch_tile_ids(dataset, k) for k in range(3)}


def test_fit_resumed_at_epoch_k_reads_the_epochs_of_an_uninterrupted_fit(dataset, monkeypatch):
    reads = fit_reads(dataset, monkeypatch, epochs=4, initial_epoch=2, start_epoch=2)
    assert reads == {2: epoch_tile_ids(dataset, 2), 3: epoch_tile_ids(dataset, 3)}
    assert epoch_tile_ids(dataset, 2) != epoch_tile_ids(dataset, 0), "the epochs differ, so the test can tell"


def test_as_pydataset_refuses_a_negative_start_epoch(dataset):
    with pytest.raises(ValueError, match="Expected an epoch to be an int >= 0. Received: -1"):
        loader(dataset).as_pydataset(start_epoch=-1)


KEEP_AN_ITERATOR_TO_THE_END = """
import sys, pandas as pd
from dalidw import SequenceDataLoader
table = pd.read_csv(sys.argv[1])
ld = SequenceDataLoader([2016, 2017, 2018], table, sys.argv[2], dim=(8, 8), batch_size=4, device="cpu")
it = iter(ld.dataset())
next(it)
print("read a batch")
"""


def test_an_iterator_alive_at_exit_leaves_no_error_lines(dataset, tmp_path):
    """A dataset iterator still held when Python exits ends without TensorFlow's "Error occurred
    when finalizing GeneratorDataset iterator ... [[{{node PyFunc}}]]" lines."""
    dataset.table.to_csv(tmp_path / "tiles.csv", index=False)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}  # every TensorFlow log line shows
    run = subprocess.run([sys.executable, "-c", KEEP_AN_ITERATOR_TO_THE_END, str(tmp_path / "tiles.csv"),
                          dataset.image_dir], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0 and "read a batch" in run.stdout, run.stderr
    assert "PyFunc" not in run.stderr and "finalizing" not in run.stderr, run.stderr
