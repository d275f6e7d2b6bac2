"""The Dockerfiles, read as text (no Docker engine in CI): the entry point is the console script,
and the install order is the README's: DALI, then the plugin without build isolation, then dalidw."""

import json
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = ["Dockerfile", "Dockerfile.ngc"]


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) pairs, continuation lines joined, comments dropped."""
    text = (ROOT / "docker" / name).read_text()
    text = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    pairs = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_parses_and_enters_through_the_console_script(name):
    steps = instructions(name)
    known = {"FROM", "WORKDIR", "COPY", "RUN", "ENV", "ENTRYPOINT", "CMD", "ARG"}
    assert {word for word, _ in steps} <= known
    assert steps[0][0] == "FROM"
    scripts = {ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("dalidw.")}
    entry = [json.loads(arg) for word, arg in steps if word == "ENTRYPOINT"]
    assert entry == [["dalidw"]] and "dalidw" in scripts
    for word, arg in steps:
        if word == "COPY":
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), f"{name} copies {source}, which is not in the repository"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_dalidw_and_smoke_tests_it(name):
    runs = " && ".join(arg for word, arg in instructions(name) if word == "RUN")
    assert re.search(r"pip install [^&]*\s(\.|\"\.\[gpu\]\")(\s|$)", runs), "the package itself is installed"
    assert "cupy-cuda12x" in runs or ".[gpu]" in runs, "CuPy holds the regions resident on the GPU"
    assert "dalidw check" in runs and "--decode" in runs and "import_plugin" in runs


def test_pypi_dockerfile_installs_the_plugin_after_dali_without_build_isolation():
    runs = " && ".join(arg for word, arg in instructions("Dockerfile") if word == "RUN")
    dali = runs.index("nvidia-dali-cuda120")
    plugin = runs.index("nvidia-dali-tf-plugin-cuda120")
    assert dali < plugin and "--no-build-isolation" in runs[dali:plugin + 40]
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-build-isolation" in makefile and makefile.index("DALI_SPEC)\"") < makefile.index("PLUGIN_SPEC)==")


def test_ngc_dockerfile_keeps_the_image_tensorflow_and_dali():
    runs = " && ".join(arg for word, arg in instructions("Dockerfile.ngc") if word == "RUN")
    assert "--no-deps" in runs
    assert "tensorflow" not in runs.replace("dalidw.tf", "") and "nvidia-dali" not in runs
