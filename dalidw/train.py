"""The seed's task: a ConvLSTM reads a tile's yearly sequence and regresses its last-year
urbanization rate. Validation follows the table's ``split`` column (``dalidw tiles --split``), else
is split by region, and is compared with a mean baseline."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError, OptionError
from .files import replaced
from .index import repeated_columns
from .loader import SequenceDataLoader
from .split import SPLITS, assign_units


@dataclass(frozen=True)
class TrainResult:
    """What training produced: validation MAEs and the files written."""

    val_mae: float
    baseline_mae: float
    model_path: str
    log_path: str
    curves_path: str
    train_tiles: int
    val_tiles: int
    split: str = "by region"
    initial_epoch: int = 0


def split_by_region(data: pd.DataFrame, val_fraction: float = 0.25, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) tables; no region has tiles in both. Regions are shared out as
    ``dalidw tiles --split region`` does (``split.assign_units``): each side gets at least one.

    Raises:
        OptionError: fewer than 2 regions.
    """
    regions = np.array(sorted(data["region_id"].unique(), key=str), dtype=object)
    if len(regions) < 2:
        raise OptionError(f"a split by region needs at least 2 regions; the table has {len(regions)}")
    codes = assign_units(len(regions), (1 - val_fraction, val_fraction), np.random.default_rng(seed), "regions")
    is_val = data["region_id"].isin(set(regions[codes == SPLITS.index("val")].tolist()))
    return data[~is_val], data[is_val]


def split_by_column(data: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) tables from the ``split`` column's "train" and "val" rows; "test" and
    empty rows (buffer tiles) are left out.

    Raises:
        DataError: a second ``split`` column, other values in the column, or no "train" or no "val" rows.
    """
    if repeated := repeated_columns(data, ["split"]):
        raise DataError(repeated, context="the table's split column cannot be used")
    values = data["split"].fillna("").astype(str).str.strip()
    unknown = sorted(set(values) - {*SPLITS, ""})
    problems = [f"split value {v!r} is not train, val or test" for v in unknown[:10]]
    problems += [f"no row has split == {name!r}" for name in ("train", "val") if not (values == name).any()]
    if problems:
        raise DataError(problems, context="the table's split column cannot be used")
    return data[values == "train"], data[values == "val"]


def build_model(frames: int, dim: tuple[int, int], channels: int, filters: int = 16):
    """A small ConvLSTM regressor: x float32 (B, T, H, W, C) -> y float32 (B, 1)."""
    import keras

    return keras.Sequential([
        keras.Input((frames, *dim, channels)),
        keras.layers.ConvLSTM2D(filters, 3, padding="same"),
        keras.layers.Conv2D(filters, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(1),
    ], name="convlstm_regressor")


def keras_backend(name: str | None) -> str:
    """The Keras backend to train with, set before Keras is imported: ``name``, else the
    ``KERAS_BACKEND`` environment variable, else "tensorflow". With JAX, XLA is told not to take
    75% of the GPU's memory at its first use (``XLA_PYTHON_CLIENT_PREALLOCATE=false`` unless set),
    so that DALI and the region store keep their share.

    Raises:
        OptionError: an unknown backend, one not installed, or Keras already imported with another.
    """
    from .arrays import BACKENDS, check_backend

    name = name or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if name == "numpy" or name not in BACKENDS:
        raise OptionError(f"Expected `backend` to be 'tensorflow', 'jax' or 'torch'. Received: {name!r}")
    check_backend(name)
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend") and keras.backend.backend() != name:
        raise OptionError(f"Keras is already imported with the {keras.backend.backend()} backend; to train with "
                          f"{name!r}, set KERAS_BACKEND={name} before anything imports keras")
    os.environ["KERAS_BACKEND"] = name
    if name == "jax":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return name


STRATEGIES = ("none", "mirrored", "multiworker")


def make_strategy(name: str):
    """None, or the ``tf.distribute`` strategy: "mirrored" (the GPUs of this machine, or its CPU),
    "multiworker" (the cluster that TF_CONFIG describes)."""
    if name not in STRATEGIES:
        raise OptionError(f"Expected `strategy` to be one of {list(STRATEGIES)}. Received: {name!r}")
    if name == "none":
        return None
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if not os.environ.get("TF_CONFIG"):
        raise OptionError("--strategy multiworker needs TF_CONFIG (the cluster and this worker's index)")
    return tf.distribute.MultiWorkerMirroredStrategy()


def distributed_steps(model, strategy, iterator, steps: int) -> list[float]:
    """Run ``steps`` training steps of a compiled ``model`` under ``strategy`` on batches from
    ``iterator`` (of ``loader.distributed_dataset``); returns the mean loss of each step.

    A custom loop, for MultiWorkerMirroredStrategy, under which Keras 3's ``model.fit`` fails.
    """
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.MeanSquaredError(reduction="none")
    replicas = strategy.num_replicas_in_sync

    def step(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            per_sample = loss_fn(tf.reshape(y, [-1, 1]), pred)
            loss = tf.reduce_sum(per_sample) / tf.cast(tf.shape(per_sample)[0] * replicas, tf.float32)
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(batch):
        per_replica = strategy.run(step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return [float(train_step(next(iterator))) for _ in range(steps)]


def predict(model, loader: SequenceDataLoader) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, targets) over one epoch of ``loader``, float32 (N,)."""
    preds, targets = [], []
    for x, y in loader:
        preds.append(np.asarray(model(x, training=False)).reshape(-1))
        targets.append(y.reshape(-1))
    return np.concatenate(preds), np.concatenate(targets)


def save_curves(log_path: str, out_path: str) -> None:
    """A PNG of the training and validation loss per epoch, from the CSV log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = pd.read_csv(log_path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for column in ("loss", "val_loss"):
        if column in log:
            ax.plot(log["epoch"] + 1, log[column], marker="o", label=column)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean squared error")
    ax.set_title("ConvLSTM on tile sequences")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


def train(
    data: pd.DataFrame,
    image_dir: str,
    labels: Sequence[Any],
    out_dir: str,
    *,
    epochs: int = 5,
    batch_size: int = 32,
    dim: tuple[int, int] = (32, 32),
    device: str = "auto",
    seed: int = 0,
    verbose: int = 2,
    strategy: str = "none",
    resume: bool = False,
    backend: str | None = None,
    **loader_options: Any,
) -> TrainResult:
    """Train the ConvLSTM regressor and write model, log and curves to ``out_dir``.

    ``loader_options`` go to both loaders (``bands``, ``num_classes``, ``scale``, ...).
    ``strategy``: "none", "mirrored" or "multiworker" (see :func:`make_strategy`); then
    ``batch_size`` is the global batch, split over the replicas (TensorFlow only).
    ``backend``: the Keras backend, "tensorflow", "jax" or "torch" (see :func:`keras_backend`):
    TensorFlow's fit reads ``loader.dataset()``, the others ``loader.as_pydataset()``.

    After each epoch ``out_dir`` gets ``checkpoint.keras`` (the model with its optimizer state)
    and then ``checkpoint.json`` (the epochs done and the run's options). ``resume=True``
    continues from them: epoch k trains on the loader's epoch k, as in a run without
    interruption, and ``log.csv`` is appended to.

    Raises:
        OptionError: ``resume`` without a checkpoint in ``out_dir``, with ``epochs`` not above the
            epochs done, with options other than the checkpoint's, or with "multiworker"; a
            strategy with a backend other than TensorFlow; a backend not installed.
    """
    backend = keras_backend(backend)
    if strategy != "none" and backend != "tensorflow":
        raise OptionError(f"Expected strategy='none' with the {backend} backend: the strategies are TensorFlow's. "
                          f"Received: strategy={strategy!r}")
    if resume and strategy == "multiworker":
        raise OptionError("Expected `strategy` to be 'none' or 'mirrored' to resume a run: the multiworker loop "
                         "writes no checkpoint. Received: strategy='multiworker', resume=True")
    dist = make_strategy(strategy)
    if dist is not None and dist.extended.should_checkpoint is False:
        out_dir = os.path.join(out_dir, f"worker-{dist.cluster_resolver.task_id}")
    options = _run_options(labels, dim, batch_size, seed, dist.num_replicas_in_sync if dist is not None else 1,
                           loader_options)
    checkpoint_path = os.path.join(out_dir, CHECKPOINT)
    saved = _read_state(out_dir) if resume else None
    initial_epoch = _epochs_done(saved, out_dir, options, epochs) if saved is not None else 0
    import keras

    os.makedirs(out_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)
    if "split" in data.columns:
        train_df, val_df = split_by_column(data)
        how = "by the table's split column"
    else:
        train_df, val_df = split_by_region(data, seed=seed)
        how = "by region"
    common = dict(dim=dim, batch_size=batch_size, device=device, random_seed=seed, **loader_options)
    train_loader = SequenceDataLoader(labels, train_df, image_dir, shuffle=True, **common)
    val_loader = SequenceDataLoader(labels, val_df, image_dir, shuffle=False, **common)
    options["train_tiles"] = _tiles_digest(train_loader)
    if saved is not None:  # checked before any file was read; again now that the training tiles are known
        _check_options(out_dir, saved["options"], options)

    scope = dist.scope() if dist is not None else contextlib.nullcontext()
    with scope:
        if resume:
            model = keras.models.load_model(checkpoint_path)
            _check_input_shape(model, (len(labels), *dim, train_loader.n_channels), checkpoint_path)
        else:
            model = build_model(len(labels), dim, train_loader.n_channels)
            model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mse", metrics=["mae"])
    model_path = os.path.join(out_dir, "model.keras")
    log_path = os.path.join(out_dir, "log.csv")
    if strategy == "multiworker":
        with _input_errors(train_loader, val_loader):
            _fit_multiworker(model, dist, train_loader, val_loader, epochs, log_path, verbose)
    else:
        if resume:
            _drop_log_rows_from(log_path, initial_epoch)
        callbacks = [keras.callbacks.CSVLogger(log_path, append=resume),
                     _checkpoint_callback(keras, model, out_dir, options)]
        if backend != "tensorflow":
            data = train_loader.as_pydataset(start_epoch=initial_epoch, backend=backend)
            steps = None
            validation = {"validation_data": val_loader.as_pydataset(backend=backend)}
        elif dist is None:
            data = train_loader.dataset(start_epoch=initial_epoch)
            steps = len(train_loader)
            validation = {"validation_data": val_loader.dataset(), "validation_steps": len(val_loader)}
        else:
            # Under a strategy, Keras re-distributes a validation dataset every epoch, and dropping
            # the previous iterator crashed the process about once in 40 runs here: validate on the
            # numpy path instead, before the log and the checkpoint see the epoch's figures.
            data = train_loader.distributed_dataset(dist, start_epoch=initial_epoch)
            steps = train_loader.steps_per_epoch(dist)
            validation = {}
            callbacks.insert(0, _validation_callback(keras, model, val_loader))
        # one GPU: train under the loader's GPU, as DALI's Keras recipe does; a strategy places replicas itself
        placement = (f"/gpu:{train_loader.device_id}" if dist is None and train_loader.device == "gpu"
                     and backend == "tensorflow" else None)
        with _tf_device(placement), _input_errors(train_loader, val_loader):
            model.fit(
                data, steps_per_epoch=steps, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                verbose=verbose,
                shuffle=False,  # the loader shuffles; tf.data datasets are not reshuffled by Keras
                **validation,
            )
    model.save(model_path)
    curves_path = os.path.join(out_dir, "loss.png")
    save_curves(log_path, curves_path)

    preds, targets = predict(model, val_loader)
    train_mean = float(train_loader.table.targets[:, 0].mean())
    return TrainResult(
        val_mae=float(np.abs(preds - targets).mean()),
        baseline_mae=float(np.abs(train_mean - targets).mean()),
        model_path=model_path, log_path=log_path, curves_path=curves_path,
        train_tiles=train_loader.n_tiles, val_tiles=val_loader.n_tiles, split=how,
        initial_epoch=initial_epoch,
    )


#: The model after the last finished epoch, with its optimizer state.
CHECKPOINT = "checkpoint.keras"
#: Written after the checkpoint: {"epochs_done": k, "options": {...}}; k counts the finished epochs.
RESUME_STATE = "checkpoint.json"


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists; anything else unknown, its repr)."""
    return json.loads(json.dumps(value, default=repr))


def _run_options(labels: Sequence[Any], dim: tuple[int, int], batch_size: int, seed: int, replicas: int,
                 loader_options: dict[str, Any]) -> dict[str, Any]:
    """What the model's shape and the sample order depend on, as JSON values (the replicas split
    each global batch; their number, not the strategy's name, changes the order)."""
    return _as_json({"labels": list(labels), "dim": list(dim), "batch_size": batch_size, "seed": seed,
                     "replicas": replicas, **loader_options})


def _tiles_digest(loader: SequenceDataLoader) -> str:
    """A digest of the training tiles in table order: another table gives another order."""
    return hashlib.sha256("\n".join(map(str, loader.table.tile_ids)).encode()).hexdigest()[:16]


def _checkpoint_callback(keras, model, out_dir: str, options: dict[str, Any]):
    """A callback saving the checkpoint, then the resume state, after each epoch."""

    def save(epoch: int, logs: dict | None = None) -> None:
        with replaced(os.path.join(out_dir, CHECKPOINT)) as temporary:
            model.save(temporary)
        with replaced(os.path.join(out_dir, RESUME_STATE)) as temporary, open(temporary, "w") as f:
            json.dump({"epochs_done": epoch + 1, "options": options}, f, indent=1)

    return keras.callbacks.LambdaCallback(on_epoch_end=save)


def _read_state(out_dir: str) -> dict[str, Any]:
    """The resume state of the run in ``out_dir``; ValueError where there is none."""
    path = os.path.join(out_dir, RESUME_STATE)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(out_dir, CHECKPOINT)):
        raise OptionError(f"Expected {CHECKPOINT} and {RESUME_STATE} of an earlier run in {out_dir} to resume it "
                         f"(training writes them after each epoch). Received: no checkpoint there")
    try:
        with open(path) as f:
            state = json.load(f)
        int(state["epochs_done"]), dict(state["options"])
    except (ValueError, KeyError, TypeError) as err:
        raise OptionError(f"Expected {path} to hold epochs_done and options. Received: unreadable ({err})") from None
    return state


def _epochs_done(state: dict[str, Any], out_dir: str, options: dict[str, Any], epochs: int) -> int:
    """The epochs done by the run in ``out_dir``, checked against this run's ``options`` and ``epochs``."""
    done = int(state["epochs_done"])
    if epochs <= done:
        raise OptionError(f"Expected `epochs` to be more than the {done} epoch(s) already done in {out_dir}. "
                         f"Received: epochs={epochs}")
    _check_options(out_dir, state["options"], options)
    return done


def _check_options(out_dir: str, saved: dict[str, Any], options: dict[str, Any]) -> None:
    """Raise ValueError naming every option that differs from the checkpoint's (absent ones aside)."""
    differ = [f"{name}={options.get(name)!r} where the checkpoint has {name}={saved.get(name)!r}"
              for name in sorted(set(saved) | set(options))
              if name in options and saved.get(name) != options[name]]
    if differ:
        raise OptionError(f"Expected the options of the run in {out_dir} to resume it. Received: " + "; ".join(differ))


def _check_input_shape(model, expected: tuple[int, ...], path: str) -> None:
    """ValueError unless ``model`` takes x of shape (B, *expected)."""
    shape = tuple(model.input_shape[1:])
    if shape != expected:
        raise OptionError(f"Expected the model in {path} to take x of shape (B, {', '.join(map(str, expected))}). "
                         f"Received: (B, {', '.join(map(str, shape))})")


def _drop_log_rows_from(log_path: str, epoch: int) -> None:
    """Remove rows of epochs >= ``epoch`` from the CSV log (written before a checkpoint that never came)."""
    if not os.path.isfile(log_path) or os.path.getsize(log_path) == 0:
        return
    log = pd.read_csv(log_path)
    if "epoch" in log and (log["epoch"] >= epoch).any():
        log[log["epoch"] < epoch].to_csv(log_path, index=False)


@contextlib.contextmanager
def _input_errors(*loaders: SequenceDataLoader):
    """Re-raise a DataError (a DecodeError, say) that one of ``loaders`` raised inside TensorFlow's
    input pipeline during the block as itself, in place of the TensorFlow error that wraps it."""
    before = [ld.last_error for ld in loaders]
    try:
        yield
    except DataError:
        raise
    except Exception:
        cause = next((ld.last_error for ld, old in zip(loaders, before) if ld.last_error is not old), None)
        if cause is None:
            raise
        raise cause from None


def _tf_device(name: str | None):
    """``tf.device(name)``, or no placement at all for None."""
    if name is None:
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.device(name)


def _validation_metrics(model, val_loader: SequenceDataLoader) -> dict[str, float]:
    """val_loss (MSE) and val_mae over one pass of ``val_loader``, on the numpy path."""
    preds, targets = predict(model, val_loader)
    return {"val_loss": float(np.mean((preds - targets) ** 2)), "val_mae": float(np.mean(np.abs(preds - targets)))}


def _validation_callback(keras, model, val_loader: SequenceDataLoader):
    """A callback adding :func:`_validation_metrics` to each epoch's logs."""
    return keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: logs.update(_validation_metrics(model, val_loader)))


def _fit_multiworker(model, strategy, train_loader: SequenceDataLoader, val_loader: SequenceDataLoader,
                     epochs: int, log_path: str, verbose: int) -> None:
    """Epochs of :func:`distributed_steps`, with the validation loss of each written to the CSV log."""
    steps = train_loader.steps_per_epoch(strategy)
    iterator = iter(train_loader.distributed_dataset(strategy))
    rows = []
    for epoch in range(epochs):
        losses = distributed_steps(model, strategy, iterator, steps)
        rows.append({"epoch": epoch, "loss": float(np.mean(losses)), **_validation_metrics(model, val_loader)})
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: loss {rows[-1]['loss']:.4f}, val_loss {rows[-1]['val_loss']:.4f}")
    pd.DataFrame(rows).to_csv(log_path, index=False)
