"""The benchmark's quick mode runs and writes its figures (no timing is asserted here)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_json_and_chart(tmp_path):
    cmd = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--data", str(tmp_path / "data"),
           "--out", str(tmp_path / "out"), "--only", "seed-style", "dalidw-cpu", "dalidw-gpu", "floor"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "out" / "quick-tiled.json").read_text())
    names = [r["loader"] for r in report["results"]]
    assert names == ["seed-style", "dalidw-cpu", "dalidw-gpu", "floor"]
    for r in report["results"]:
        assert r.get("samples_per_s", 0) > 0 or "skipped" in r
    assert (tmp_path / "out" / "quick-tiled.png").stat().st_size > 0
    assert "samples/s" in run.stdout
