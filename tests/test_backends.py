"""Keras on every backend: the loader's PyDataset feeds JAX (and PyTorch) with their own arrays,
and ``dalidw train --backend`` trains, logs and resumes on JAX; a backend that is missing or does
not fit is one clear error. JAX runs on the CPU here (about 1 s per step of even a tiny ConvLSTM),
so the models are tiny: JAX is for the GPU."""

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest


def dalidw(*args, env=None):
    exe = shutil.which("dalidw") or os.path.join(os.path.dirname(sys.executable), "dalidw")
    env = env if env is not None else {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def jax_data(tmp_path_factory):
    pytest.importorskip("jax")
    out = tmp_path_factory.mktemp("synth")
    result = dalidw("synth", out, "--regions", 2, "--size", "96x128", "--tile", "32x32", "--labels", "2016..2018")
    assert result.returncode == 0, result.stderr
    return out


JAX_FIT = """
import sys
import numpy as np, pandas as pd, keras
from dalidw import SequenceDataLoader
assert keras.backend.backend() == "jax"
table = pd.read_csv(sys.argv[1])
ld = SequenceDataLoader([2016, 2017, 2018], table, sys.argv[2], dim=(8, 8), batch_size=8, device="cpu")
check = SequenceDataLoader([2016, 2017, 2018], table, sys.argv[2], dim=(8, 8), batch_size=8, device="cpu")
data = ld.as_pydataset()
x, y = data[0]
assert isinstance(x, np.ndarray) and np.array_equal(x, check[0][0]) and np.array_equal(y, check[0][1])
from dalidw.keras_adapter import FeedBatches
real, read = FeedBatches.__getitem__, []
def noting(self, index):
    read.append((self.epoch, index))
    return real(self, index)
FeedBatches.__getitem__ = noting
model = keras.Sequential([keras.Input((3, 8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
model.compile(optimizer="sgd", loss="mse")
history = model.fit(data, epochs=2, shuffle=False, verbose=0)
assert len(history.history["loss"]) == 2 and all(np.isfinite(history.history["loss"]))
batches = len(ld)
# JAX's trainer reads batch 0 once to build the model; then fit's epoch k reads the loader's epoch k
assert read == [(0, 0)] + [(e, i) for e in range(2) for i in range(batches)], read
assert ld.epoch == 2
print("fitted under", keras.backend.backend())
"""


def test_a_keras_model_fits_on_the_loaders_pydataset_under_jax(jax_data, tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(JAX_FIT)
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, str(script), str(jax_data / "tiles.csv"), str(jax_data / "Images")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0 and "fitted under jax" in run.stdout, run.stderr[-3000:]


def test_dalidw_train_trains_and_resumes_on_jax(jax_data, tmp_path):
    out = tmp_path / "run"
    common = ["train", jax_data / "tiles.csv", jax_data / "Images", "--labels", "2016..2018", "--batch-size", 8,
              "--dim", 8, "--device", "cpu", "--backend", "jax", "--out", out]
    first = dalidw(*common, "--epochs", 2)
    assert first.returncode == 0, first.stderr[-3000:]
    assert pd.read_csv(out / "log.csv").epoch.tolist() == [0, 1]
    resumed = dalidw(*common, "--epochs", 3, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed after epoch 2 of 3" in resumed.stdout
    assert pd.read_csv(out / "log.csv").epoch.tolist() == [0, 1, 2]
    assert "Could not find cuda drivers" not in first.stderr + resumed.stderr


def test_a_backend_that_is_not_installed_or_does_not_fit_is_one_clear_error(jax_data, tmp_path, monkeypatch):
    from dalidw.arrays import check_backend, converter
    from dalidw.errors import DeviceUnavailableError, OptionError
    from dalidw.train import keras_backend

    with pytest.raises(OptionError, match="Expected a Keras backend in"):
        check_backend("mxnet")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(OptionError, match=r"The Keras backend 'torch' is not installed: pip install torch"):
        check_backend("torch")
    monkeypatch.undo()
    keras = pytest.importorskip("keras")
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())  # restored after the test
    assert keras.backend.backend() == "tensorflow"
    with pytest.raises(OptionError, match="Keras is already imported with the tensorflow backend"):
        keras_backend("jax")
    result = dalidw("train", jax_data / "tiles.csv", jax_data / "Images", "--backend", "jax", "--strategy",
                    "mirrored", "--out", tmp_path / "run")
    assert result.returncode == 2 and "Expected strategy='none' with the jax backend" in result.stderr
    jax = pytest.importorskip("jax")
    try:
        jax.devices("gpu")
    except RuntimeError:  # a CPU-only jaxlib, as make setup installs without a GPU
        with pytest.raises(DeviceUnavailableError, match="JAX sees no GPU"):
            converter("jax", "gpu", 0)
