"""The benchmark's quick mode and the GPU check's CPU self-test run and write their figures (no
timing is asserted here: speed is the benchmark's to show, not a test's)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def test_quick_benchmark_writes_json_and_chart(tmp_path):
    names = ["seed", "tf.data", "dalidw-cpu", "dalidw-gpu", "floor-dali"]
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--data", str(tmp_path / "data"),
           "--out", str(tmp_path / "out"), "--only", *names]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={"DALIDW_SEED_CODE": "",
                                                                               **_env()})
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "out" / "quick-tiled.json").read_text())
    rows = {r["loader"]: r for r in report["results"]}
    assert list(rows) == names
    assert "no --seed-code" in rows["seed"]["skipped"]
    for name in ("tf.data", "dalidw-cpu", "floor-dali"):
        assert rows[name]["samples_per_s"] > 0 and rows[name]["cpu_s_per_1000"] > 0
    assert rows["dalidw-cpu"]["host_ms_per_batch"]["inputs_and_feed"] > 0
    assert rows["dalidw-cpu"]["regions_per_batch"] > 1, "a shuffled batch mixes regions"
    assert (tmp_path / "out" / "quick-tiled.png").stat().st_size > 0
    assert "samples/s" in run.stdout


def test_the_tiles_benchmark_builds_the_synthetic_targets(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "tiles.py"), "--quick", "--data", str(tmp_path / "data"),
           "--out", str(tmp_path / "out")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "out" / "tiles-quick.json").read_text())
    rows = report["rows"]
    assert rows["tiles"]["targets_match_synthetic_table"] is True
    assert rows["tiles"]["grid_tiles"] == 4 * (1024 // 32) ** 2
    assert rows["tiles-stream"]["tiles"] == rows["tiles"]["tiles"] > 0
    assert (tmp_path / "data" / "tiles-stream.csv").read_text() == (tmp_path / "data" / "tiles-bench.csv").read_text()


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "DALIDW_SEED_CODE"}


def test_the_seed_row_loads_the_original_file_with_its_one_patch(tmp_path):
    from baselines import SEED_PATCHES, load_seed

    source = tmp_path / "SequenceDataLoader.py"
    source.write_text("class SequenceDataLoader:\n    def f(self, y, cursor, tileID):\n        "
                      + SEED_PATCHES[0][0].strip() + "\n        return y\n")
    loader_class = load_seed(str(source))
    assert "SequenceDataLoader" in repr(loader_class)
    source.write_text("class SequenceDataLoader:\n    pass\n")
    with pytest.raises(ValueError, match="the line to patch is not there"):
        load_seed(str(source))


def test_gpu_check_self_test_runs_every_part_on_the_cpu_and_writes_its_summary(tmp_path):
    out = tmp_path / "check.json"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--self-test", "--out", str(out), "--batches", "3"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["ok"] and summary["device"] == "cpu"
    assert summary["placement"]["ok"] and any("Resize" in op for op in summary["placement"]["operators"])
    assert len(summary["parity"]) == 9
    for name, result in summary["parity"].items():
        assert result["ok"] and result["max_abs_diff"] <= 1e-5 and result["batches"] > 0, name
    assert summary["tiff_variants"]["uint8 RGB, deflate, tiled"] == {"ok": True, "decoded_by": "DALI cpu"}
    speed = summary["graph_speed"]
    for row in ("dalidw graph", "dalidw graph, 3 batches ahead", "dalidw graph, batch 1024",
                "dalidw graph fed host crops", "peer: array ops, regions resident"):
        assert speed[row]["samples_per_s"] > 0 and speed[row]["host_cores_busy"] > 0, row
    assert speed["peer: array ops, regions resident"]["max_abs_diff_vs_dalidw"] <= 1e-5
    assert summary["large_regions"]["samples_per_s"] > 0 and summary["large_regions"]["tiles"] > 0
    threads = speed["dalidw graph"]["threads_ms_per_batch"]  # where the host time goes, thread by thread
    assert threads["MainThread"] > 0 and sum(threads.values()) > 0
    blocking = summary["blocking_sync"]  # its own process; on the CPU without the CUDA flag
    assert blocking["ok"] and blocking["dalidw graph"]["samples_per_s"] > 0, blocking
    head = summary["summary"]
    assert head["graph_samples_per_s"] == speed["dalidw graph"]["samples_per_s"] and head["parity_ok"]
    assert head["best_peer_samples_per_s"] == speed["peer: array ops, regions resident"]["samples_per_s"]
    training = summary["training"]
    if "skipped" not in training:  # Keras on JAX: the loader's share of a training step, on the CPU
        assert training["backend"] == "jax" and training["ok"], training
        assert training["held_batches"] and all(row["ok"] for row in training["held_batches"])
        for model in ("default", "large"):
            row = training[model]
            assert row["fed_by_dalidw"]["steps_per_s"] > 0 and row["resident_batches"]["steps_per_s"] > 0
        assert head["fit_backend"] == "jax" and head["fit_input_overhead"] == training["default"]["input_overhead"]


def test_gpu_check_fails_when_a_section_raised_or_a_variant_differs():
    from gpu_check import passed

    good = {"placement": {"ok": True}, "parity": {"setup": {"ok": True}}, "tensorflow": {"skipped": "no TF"},
            "tiff_variants": {"deflate": {"ok": True}, "LZW": {"skipped": "no codec here"}},
            "graph_speed": {"setup": {"batch": 4}, "row": {"samples_per_s": 1.0}, "device_memory_used_mib": 1.0}}
    assert passed(good)
    assert not passed({**good, "graph_speed": {"ok": False, "error": "RuntimeError", "where": []}})
    assert not passed({**good, "tiff_variants": {"float32": {"ok": False, "decoded_by": "DALI mixed"}}})
    assert not passed({**good, "parity": {"ok": False, "error": "ValueError"}})


def test_gpu_check_comparison_fails_on_a_difference():
    from gpu_check import compare

    a = np.zeros((2, 3), np.float32)
    assert compare(a, a.copy())["ok"]
    b = a.copy()
    b[1, 2] = 2e-5
    assert not compare(b, a)["ok"]
    assert not compare(a[:1], a)["ok"]
    big = np.full((2, 3), 3.0, np.float32)  # the bound scales with the values: 1e-5 * 3
    assert compare(big + 2e-5, big)["ok"] and not compare(big + 4e-5, big)["ok"]


@pytest.mark.slow
def test_quick_curves_write_a_json_and_a_chart_per_curve(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--curves", "--quick", "--data", str(tmp_path / "data"),
           "--out", str(tmp_path / "out")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "curves-quick-tiled.json").read_text())
    assert set(report["curves"]) == {"batch", "frames", "size", "data"}
    for curve in report["curves"]:
        assert (tmp_path / "out" / f"curve-quick-{curve}.png").stat().st_size > 0
