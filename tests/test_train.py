"""`train(..., resume=True)` continues a run as if it had never stopped: epoch k trains on the
loader's epoch k, from the model and optimizer of the checkpoint, and the log goes on."""

import shutil

import numpy as np
import pandas as pd
import pytest

import dalidw.train
from dalidw.loader import SequenceDataLoader

from .conftest import YEARS, make_dataset

tf = pytest.importorskip("tensorflow")


class RecordingLoader(SequenceDataLoader):
    """A loader whose shuffled dataset() notes the targets of every batch that training pulls."""

    pulled: list = []

    def dataset(self, *, start_epoch: int = 0):
        ds = super().dataset(start_epoch=start_epoch)
        if not self.shuffle:  # the validation loader
            return ds

        def note(y):
            RecordingLoader.pulled.append(tuple(np.round(y, 6)))
            return y

        def tap(x, y):
            return x, tf.ensure_shape(tf.numpy_function(note, [y], tf.float32, stateful=True), y.shape)

        return ds.map(tap)


def pulled_batches(monkeypatch, ds, out, epochs, **options) -> list:
    """The targets of each training batch, in the order training pulled them."""
    monkeypatch.setattr(dalidw.train, "SequenceDataLoader", RecordingLoader)
    RecordingLoader.pulled = []
    dalidw.train.train(ds.table, ds.image_dir, YEARS, str(out), epochs=epochs, batch_size=3, dim=(8, 8),
                       device="cpu", verbose=0, **options)
    return list(RecordingLoader.pulled)


def test_a_resumed_run_trains_the_epochs_of_an_uninterrupted_one(tmp_path, monkeypatch):
    ds = make_dataset(tmp_path / "data", regions=3)
    steps = 5  # 14 training tiles of 2 regions in batches of 3
    whole = pulled_batches(monkeypatch, ds, tmp_path / "whole", epochs=3)
    first = pulled_batches(monkeypatch, ds, tmp_path / "run", epochs=1)
    rest = pulled_batches(monkeypatch, ds, tmp_path / "run", epochs=3, resume=True)
    assert len(whole) >= 3 * steps and whole[:steps] != whole[steps : 2 * steps], "shuffled epochs differ"
    assert first[:steps] == whole[:steps]
    assert rest[: 2 * steps] == whole[steps : 3 * steps], "epochs 1 and 2 in the order of the uninterrupted run"
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert list(log.epoch) == [0, 1, 2]
    whole_log = pd.read_csv(tmp_path / "whole" / "log.csv")
    np.testing.assert_allclose(log.loss, whole_log.loss, rtol=1e-4)


def test_resume_drops_log_rows_of_epochs_after_the_checkpoint(one_epoch_run, tmp_path, monkeypatch):
    ds, run = one_epoch_run
    shutil.copytree(run, tmp_path / "run")
    log_path = tmp_path / "run" / "log.csv"
    log = pd.read_csv(log_path)
    pd.concat([log, log.assign(epoch=1)]).to_csv(log_path, index=False)  # a row written, then a crash
    pulled_batches(monkeypatch, ds, tmp_path / "run", epochs=2, resume=True)
    assert list(pd.read_csv(log_path).epoch) == [0, 1]


def test_resume_refuses_a_different_tiles_table(one_epoch_run, tmp_path):
    ds, run = one_epoch_run
    shutil.copytree(run, tmp_path / "run")
    fewer = ds.table[~ds.table.tile_id.isin(ds.table.groupby("region_id").tile_id.min())]  # a tile less per region
    with pytest.raises(ValueError, match="train_tiles="):
        dalidw.train.train(fewer, ds.image_dir, YEARS, str(tmp_path / "run"), epochs=2, batch_size=3, dim=(8, 8),
                           device="cpu", verbose=0, resume=True)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A dataset of 3 regions and the folder of a 1-epoch run on it."""
    root = tmp_path_factory.mktemp("one-epoch")
    ds = make_dataset(root / "data", regions=3)
    dalidw.train.train(ds.table, ds.image_dir, YEARS, str(root / "run"), epochs=1, batch_size=3, dim=(8, 8),
                       device="cpu", verbose=0)
    return ds, root / "run"


@pytest.mark.parametrize("change, message", [
    ({"epochs": 1}, "Expected `epochs` to be more than the 1 epoch(s) already done in"),
    ({"dim": (12, 12)}, "dim=[12, 12] where the checkpoint has dim=[8, 8]"),
    ({"labels": YEARS[1:]}, "labels=[2017, 2018] where the checkpoint has labels=[2016, 2017, 2018]"),
    ({"seed": 5}, "seed=5 where the checkpoint has seed=0"),
    ({"strategy": "multiworker"}, "Expected `strategy` to be 'none' or 'mirrored' to resume a run"),
])
def test_resume_refuses_a_run_it_cannot_continue(one_epoch_run, tmp_path, change, message):
    ds, run = one_epoch_run
    shutil.copytree(run, tmp_path / "run")
    options = {"epochs": 2, "dim": (8, 8), "labels": YEARS, "seed": 0, **change}
    with pytest.raises(ValueError) as raised:
        dalidw.train.train(ds.table, ds.image_dir, options.pop("labels"), str(tmp_path / "run"), batch_size=3,
                           device="cpu", verbose=0, resume=True, **options)
    assert message in str(raised.value)
    assert pd.read_csv(tmp_path / "run" / "log.csv").epoch.tolist() == [0], "the run is left as it was"


def test_resume_without_a_checkpoint_says_so(tmp_path):
    ds = make_dataset(tmp_path / "data", regions=3)
    with pytest.raises(ValueError, match="Expected checkpoint.keras and checkpoint.json of an earlier run in"):
        dalidw.train.train(ds.table, ds.image_dir, YEARS, str(tmp_path / "empty"), epochs=2, device="cpu",
                           resume=True)

