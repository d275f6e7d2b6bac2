"""The seed's task: a ConvLSTM reads a tile's yearly sequence and regresses its last-year
urbanization rate. Validation is split by region, and compared with a mean baseline."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .loader import SequenceDataLoader


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


def split_by_region(data: pd.DataFrame, val_fraction: float = 0.25, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation) tables; no region has tiles in both."""
    regions = np.array(sorted(data["region_id"].unique(), key=str), dtype=object)
    if len(regions) < 2:
        raise ValueError(f"a split by region needs at least 2 regions; the table has {len(regions)}")
    rng = np.random.default_rng(seed)
    n_val = min(len(regions) - 1, max(1, round(len(regions) * val_fraction)))
    val_regions = set(rng.permutation(regions)[:n_val].tolist())
    is_val = data["region_id"].isin(val_regions)
    return data[~is_val], data[is_val]


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


def predict(model, loader: SequenceDataLoader) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, targets) over one epoch of ``loader``, float32 (N,)."""
    preds, targets = [], []
    for x, y in loader:
        preds.append(model.predict_on_batch(x).reshape(-1))
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
    **loader_options: Any,
) -> TrainResult:
    """Train the ConvLSTM regressor and write model, log and curves to ``out_dir``.

    ``loader_options`` go to both loaders (``bands``, ``num_classes``, ``scale``, ...)."""
    import keras

    os.makedirs(out_dir, exist_ok=True)
    keras.utils.set_random_seed(seed)
    train_df, val_df = split_by_region(data, seed=seed)
    common = dict(dim=dim, batch_size=batch_size, device=device, random_seed=seed, **loader_options)
    train_loader = SequenceDataLoader(labels, train_df, image_dir, shuffle=True, **common)
    val_loader = SequenceDataLoader(labels, val_df, image_dir, shuffle=False, **common)

    model = build_model(len(labels), dim, train_loader.n_channels)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mse", metrics=["mae"])
    model_path = os.path.join(out_dir, "model.keras")
    log_path = os.path.join(out_dir, "log.csv")
    model.fit(
        train_loader.dataset(), steps_per_epoch=len(train_loader), epochs=epochs,
        validation_data=val_loader.dataset(), validation_steps=len(val_loader),
        callbacks=[keras.callbacks.CSVLogger(log_path),
                   keras.callbacks.ModelCheckpoint(os.path.join(out_dir, "checkpoint.keras"))],
        verbose=verbose,
        shuffle=False,  # the loader shuffles; tf.data datasets are not reshuffled by Keras
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
        train_tiles=train_loader.n_tiles, val_tiles=val_loader.n_tiles,
    )
