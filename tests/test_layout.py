"""The package reads in one direction: every module imports only modules listed below it in
"Layout of the code" of docs/how-it-works.md, and no code reads another module's or object's private names."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dalidw"


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def layout_ranks() -> dict[str, tuple[int, int]]:
    """Module name -> (line, place on the line) in the layout block of docs/how-it-works.md."""
    page = (ROOT / "docs" / "how-it-works.md").read_text(encoding="utf-8")
    block = page[page.index("## Layout of the code") :]
    block = block[block.index("```\ndalidw/") + 4 : block.index("\ntests/")]
    ranks = {}
    for line_no, line in enumerate(block.splitlines()):
        listed = re.match(r"  ((?:\w+\.py(?:, )?)+)", line)  # the names before the description
        names = re.findall(r"(\w+)\.py", listed.group(1)) if listed else []
        for place, name in enumerate(names):
            ranks[name] = (line_no, place)
    return ranks


def package_imports(path: Path) -> set[str]:
    """The dalidw modules ``path`` imports, anywhere in it (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dalidw."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "dalidw":
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("dalidw."))
    return found & set(MODULES)


def private_reads(path: Path) -> list[str]:
    """``x._name`` on anything but ``self``/``cls``, ``from ... import _name``, and ``getattr``,
    ``setattr`` or ``monkeypatch.setattr`` of a ``"_name"``, in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        attribute = isinstance(node, ast.Attribute) and re.match(r"_[^_]", node.attr) is not None \
            and ast.unparse(node.value) not in ("self", "cls")
        imported = isinstance(node, ast.ImportFrom) and any(re.match(r"_[^_]", a.name) for a in node.names)
        by_name = isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] in ("getattr", "setattr") \
            and any(isinstance(arg, ast.Constant) and re.match(r"_[^_]", str(arg.value)) for arg in node.args[1:2])
        if attribute or imported or by_name:
            out.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    return out


def test_the_layout_lists_every_module_of_the_package():
    assert sorted(layout_ranks()) == MODULES


@pytest.mark.parametrize("module", MODULES)
def test_a_module_imports_only_modules_below_it_in_the_layout(module):
    ranks = layout_ranks()
    upward = sorted(name for name in package_imports(PACKAGE / f"{module}.py") if ranks[name] <= ranks[module])
    assert upward == [], f"{module}.py imports {upward}, listed at or above it"


def test_no_code_reads_private_names_of_other_modules_or_objects():
    files = [*PACKAGE.glob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")]
    assert len(files) > 30
    reads = [read for path in sorted(files) for read in private_reads(path)]
    assert reads == []
