"""The hand-off to TensorFlow: the DALI graph as a ``tf.data.Dataset`` through the DALI plugin.

DALI's ``DALIDatasetWithInputs`` takes per-sample ``tf.data`` inputs for the graph's external
sources. Each input is a generator over the loader's own (epoch, batch) bookkeeping, so the
streams stay aligned however far ahead TensorFlow or DALI prefetch. A partial last batch is
padded to a full one for DALI and trimmed again on the TensorFlow side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .pipeline import FRAMES, TARGET, build_pipeline

if TYPE_CHECKING:
    from .loader import SequenceDataLoader

#: TensorFlow releases the DALI plugin ships prebuilt for, as (major, minor).
SUPPORTED_TF = ((2, 20), (2, 21))

PLUGIN_HINT = (
    "The DALI TensorFlow plugin is missing. Install it after TensorFlow and DALI:\n"
    "  pip install --no-build-isolation nvidia-dali-tf-plugin-cuda120\n"
    "(or run `make setup`). It ships prebuilt for TensorFlow "
    + " and ".join(f"{a}.{b}" for a, b in SUPPORTED_TF) + "."
)


def import_plugin():
    """Import TensorFlow and the DALI plugin, or fail saying what to install."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError("TensorFlow is not installed: pip install 'tensorflow>=2.20,<2.22'") from None
    try:
        from nvidia.dali.plugin import tf as dali_tf
    except ImportError as err:
        raise ImportError(f"{PLUGIN_HINT}\n(import failed: {err})") from None
    if not dali_tf.dataset_inputs_compatible_tensorflow():
        raise ImportError(f"TensorFlow {tf.__version__} is too old for DALI dataset inputs; {PLUGIN_HINT}")
    return tf, dali_tf


def make_dataset(loader: SequenceDataLoader, *, start_epoch: int = 0):
    """The repeating (x, y) dataset of ``loader``, starting at epoch ``start_epoch``."""
    tf, dali_tf = import_plugin()
    spec = loader._spec()
    batch = spec.batch_size
    frames = spec.frames
    channels = spec.out_channels
    height, width = spec.dim
    in_dtype = tf.as_dtype(spec.input_dtype)

    device = "/gpu:%d" % spec.device_id if spec.device == "gpu" else "/cpu:0"
    inputs = {}
    with tf.device("/cpu:0"):
        frames_ds = tf.data.Dataset.from_generator(
            lambda: loader._stream(FRAMES, start_epoch),
            output_signature=tf.TensorSpec((frames, None, None, spec.channels), in_dtype))
        inputs[FRAMES] = (frames_ds, "FHWC")
        if not spec.split_last:
            target_ds = tf.data.Dataset.from_generator(
                lambda: loader._stream(TARGET, start_epoch),
                output_signature=tf.TensorSpec((spec.target_size,), tf.float32))
            inputs[TARGET] = (target_ds, None)

    if spec.split_last:
        shapes = ((batch, frames - 1, height, width, channels), (batch, height, width, channels))
    else:
        shapes = ((batch, frames, height, width, channels), (batch, spec.target_size))

    with tf.device(device):
        input_datasets = {}
        for name, (ds, layout) in inputs.items():
            if spec.device == "gpu":
                ds = ds.apply(tf.data.experimental.copy_to_device(device))
            input_datasets[name] = dali_tf.experimental.Input(ds, layout=layout, batch=False)
        pipe = build_pipeline(spec)
        dataset = dali_tf.experimental.DALIDatasetWithInputs(
            pipeline=pipe,
            input_datasets=input_datasets,
            batch_size=batch,
            output_shapes=shapes,
            output_dtypes=(tf.float32, tf.float32),
            device_id=spec.device_id,
            num_threads=spec.num_threads,
        )
        dataset = _shape_targets(tf, dataset, loader)
        dataset = _trim_last_batch(tf, dataset, len(loader), loader.n_tiles - (len(loader) - 1) * batch, batch)
    return dataset


def _shape_targets(tf, dataset, loader: SequenceDataLoader):
    if loader.split_last or len(loader.table.target_names) != 1:
        return dataset
    return dataset.map(lambda x, y: (x, tf.reshape(y, [-1])))


def _trim_last_batch(tf, dataset, batches: int, last: int, batch: int):
    """Cut the padding off the last batch of every epoch; full batches pass untouched."""
    if last == batch:
        return dataset

    def trim(step, xy):
        x, y = xy
        size = tf.where(step % batches == batches - 1, last, batch)
        return tf.cond(size < batch, lambda: (x[:size], y[:size]), lambda: (x, y))

    return dataset.enumerate().map(trim)
