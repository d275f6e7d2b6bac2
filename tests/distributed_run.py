"""One process of the tf.distribute tests (run by tests/test_distribute.py in a subprocess, since
TensorFlow's devices and TF_CONFIG are fixed once it starts).

    python tests/distributed_run.py mirrored DATA_DIR      # two logical CPUs, one process
    python tests/distributed_run.py multiworker DATA_DIR   # one worker; TF_CONFIG says which

Prints one JSON line: the targets (= tile ids) each local replica saw over one epoch, and the
training losses (model.fit for mirrored, dalidw's own training steps for multiworker).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

YEARS = [2016, 2017, 2018]


def main() -> int:
    mode, data_dir = sys.argv[1], sys.argv[2]
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()

    import keras
    import pandas as pd

    from dalidw import SequenceDataLoader
    from dalidw.train import build_model

    table = pd.read_csv(os.path.join(data_dir, "tiles.csv"))
    table["target"] = table["tile_id"].astype(float)  # y tells which tile a replica saw
    loader = SequenceDataLoader(YEARS, table, os.path.join(data_dir, "Images"), dim=(16, 16), batch_size=6,
                                device="cpu", random_seed=11)
    steps = loader.steps_per_epoch(strategy)

    seen: list[list[float]] = [[] for _ in range(strategy.num_replicas_in_sync)]
    iterator = iter(loader.distributed_dataset(strategy))
    for _ in range(steps):
        _, y = next(iterator)
        for replica, part in enumerate(strategy.experimental_local_results(y)):
            seen[replica] += [float(v) for v in part.numpy()]

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = build_model(len(YEARS), (16, 16), 3, filters=2)
        model.compile(optimizer="adam", loss="mse")
    if mode == "mirrored":
        history = model.fit(loader.distributed_dataset(strategy), steps_per_epoch=steps, epochs=2, verbose=0)
        losses = [float(v) for v in history.history["loss"]]
    else:  # Keras 3's fit fails under MultiWorkerMirroredStrategy: dalidw's own loop
        from dalidw.train import distributed_steps

        losses = distributed_steps(model, strategy, iter(loader.distributed_dataset(strategy)), 3)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "steps": steps, "seen": seen, "losses": losses}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
