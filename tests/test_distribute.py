"""Shards and tf.distribute: disjoint shards that cover every tile once per epoch, in lockstep;
MirroredStrategy over two logical CPUs and MultiWorkerMirroredStrategy over two local processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dalidw import SequenceDataLoader
from dalidw.order import batch_positions, epoch_order, shard_batch_sizes

from .conftest import YEARS, make_dataset

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "distributed_run.py"


@pytest.mark.parametrize("num_shards, batch_size, n_tiles", [
    (1, 4, 10), (2, 4, 16), (2, 4, 17), (2, 5, 11), (3, 4, 10), (4, 3, 13), (8, 2, 9), (3, 32, 100), (2, 2, 5),
])
def test_shards_cover_every_tile_once_per_epoch_in_the_same_number_of_batches(num_shards, batch_size, n_tiles):
    orders = []
    for epoch in range(2):
        order = epoch_order(n_tiles, epoch, seed=5, shuffle=True)
        counts = {len(shard_batch_sizes(n_tiles, batch_size, shard_id=s, num_shards=num_shards))
                  for s in range(num_shards)}
        assert len(counts) == 1, "every shard runs the same number of steps"
        (count,) = counts
        batches = [[batch_positions(order, i, batch_size, shard_id=s, num_shards=num_shards)
                    for i in range(count)] for s in range(num_shards)]
        seen = np.concatenate([b for shard in batches for b in shard])
        assert sorted(seen.tolist()) == list(range(n_tiles))
        assert all(0 < len(b) <= batch_size for shard in batches for b in shard)
        sizes = [sum(len(b) for b in shard) for shard in batches]
        assert max(sizes) - min(sizes) <= 1
        orders.append([np.concatenate(shard).tolist() for shard in batches])
    assert orders[0] != orders[1] or n_tiles < 3


def test_one_shard_is_the_unsharded_epoch():
    np.testing.assert_array_equal(shard_batch_sizes(10, 4), [4, 4, 2])
    np.testing.assert_array_equal(shard_batch_sizes(9, 4, shard_id=1, num_shards=2), [3, 1])  # not [4, 0]


def test_impossible_shards_are_refused():
    with pytest.raises(ValueError, match="3 tiles cannot be split over 4 shards"):
        shard_batch_sizes(3, 2, shard_id=0, num_shards=4)
    with pytest.raises(ValueError, match="batch_size=1 cannot split 5 tiles over 2 shards"):
        shard_batch_sizes(5, 1, shard_id=1, num_shards=2)


def test_sharded_loaders_agree_on_the_epoch_and_split_it(tmp_path):
    ds = make_dataset(tmp_path, tiles_per_region=9)
    options = {"device": "cpu", "batch_size": 4, "dim": (8, 8), "random_seed": 9}
    full = SequenceDataLoader(YEARS, ds.table, ds.image_dir, **options)
    shards = [SequenceDataLoader(YEARS, ds.table, ds.image_dir, shard_id=s, num_shards=3, **options) for s in range(3)]
    for epoch in range(2):
        ids = [t for ld in shards for i in range(len(ld)) for t in ld.tile_ids(i)]
        assert sorted(ids) == sorted(ds.table.tile_id.unique())
        assert len({len(ld) for ld in shards}) == 1
        for s, ld in enumerate(shards):
            split = full.shard(s, 3)
            for _ in range(epoch):
                split.on_epoch_end()
            for i in range(len(ld)):
                np.testing.assert_array_equal(ld.tile_ids(i), split.tile_ids(i))
                np.testing.assert_array_equal(ld[i][0], split[i][0])
            ld.on_epoch_end()


def test_a_shard_dataset_equals_its_batches_including_a_split_last_batch(tmp_path):
    pytest.importorskip("tensorflow")
    ds = make_dataset(tmp_path, tiles_per_region=4)
    table = ds.table[ds.table.tile_id != ds.table.tile_id.iloc[0]]  # 7 tiles: shards of 4 and 3
    ld = SequenceDataLoader(YEARS, table, ds.image_dir, device="cpu", batch_size=3, dim=(8, 8), shard_id=1,
                            num_shards=2)
    assert list(ld.batch_sizes) == [2, 1], "7 tiles over 2 shards of batch 3: the short shard ends 2, 1"
    got = list(ld.dataset().take(2 * len(ld)).as_numpy_iterator())
    for epoch in range(2):
        for i in range(len(ld)):
            x, y = got[epoch * len(ld) + i]
            np.testing.assert_array_equal(x, ld[i][0])
            np.testing.assert_array_equal(y, ld[i][1])
        ld.on_epoch_end()


def test_bad_shard_options_are_named(dataset):
    with pytest.raises(ValueError, match="Expected 0 <= shard_id < num_shards"):
        SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, device="cpu", shard_id=2, num_shards=2)
    ld = SequenceDataLoader(YEARS, dataset.table, dataset.image_dir, device="cpu", shard_id=0, num_shards=2)
    with pytest.raises(ValueError, match="already shard 0 of 2"):
        ld.shard(1, 2)


# -- tf.distribute, each in its own process --------------------------------------------------------

@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from dalidw.synth import SynthSpec, write_dataset

    out = tmp_path_factory.mktemp("dist")
    write_dataset(out, SynthSpec(regions=2, height=96, width=96, tile=(20, 20), years=YEARS))
    return out


def run_worker(mode: str, data_dir, env_extra=None) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env_extra or {})}
    return subprocess.Popen([sys.executable, str(RUNNER), mode, str(data_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: int = 240) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"worker did not stop within {timeout} s:\n{err[-2000:]}")
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def all_tile_ids(data_dir) -> list[float]:
    return sorted(float(t) for t in pd.read_csv(Path(data_dir) / "tiles.csv").tile_id.unique())


def test_mirrored_strategy_over_two_cpus_trains_on_disjoint_shards(synth_dir):
    report = finish(run_worker("mirrored", synth_dir))
    assert report["replicas"] == 2
    first, second = report["seen"]
    assert first and second and not set(first) & set(second)
    assert sorted(first + second) == all_tile_ids(synth_dir)
    assert len(report["losses"]) == 2 and all(np.isfinite(report["losses"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_strategy_over_two_processes_trains_on_disjoint_shards(synth_dir):
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(run_worker("multiworker", synth_dir, {"TF_CONFIG": json.dumps(config)}))
    reports = [finish(p) for p in procs]
    seen = [sum(r["seen"], []) for r in reports]
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == all_tile_ids(synth_dir)
    assert reports[0]["losses"] == reports[1]["losses"], "the workers train one model in step"
    assert len(reports[0]["losses"]) == 3 and all(np.isfinite(reports[0]["losses"]))


def test_dalidw_train_multiworker_runs_one_model_over_two_processes(synth_dir, tmp_path):
    workers = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    exe = Path(sys.executable).parent / "dalidw"
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps(config)}
        procs.append(subprocess.Popen(
            [str(exe), "train", str(synth_dir / "tiles.csv"), str(synth_dir / "Images"), "--labels", "2016..2018",
             "--strategy", "multiworker", "--epochs", "2", "--batch-size", "8", "--dim", "16", "--device", "cpu",
             "--out", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        outputs.append(out)
    maes = [line for out in outputs for line in out.splitlines() if line.startswith("validation MAE")]
    assert len(maes) == 2 and maes[0] == maes[1], "both workers hold the same model"
    assert (tmp_path / "run" / "model.keras").is_file() and (tmp_path / "run" / "worker-1" / "model.keras").is_file()
    assert len(pd.read_csv(tmp_path / "run" / "log.csv")) == 2
