"""docs/loader.md is the one home of the loader's option and method documentation: its tables name
every parameter, in the order of the signature, and every public member."""

import ast
import inspect
import re
from pathlib import Path

from dalidw import SequenceDataLoader

LOADER_PAGE = (Path(__file__).resolve().parents[1] / "docs" / "loader.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text under ``### title``, up to the next heading of any level."""
    start = LOADER_PAGE.index(f"### {title}\n")
    end = re.compile(r"^#{1,6} ", re.MULTILINE).search(LOADER_PAGE, start + 1)
    return LOADER_PAGE[start : end.start() if end else len(LOADER_PAGE)]


def test_the_parameters_table_names_every_parameter_in_signature_order():
    rows = [line for line in section("Parameters").splitlines() if line.startswith("| `")]
    documented = [name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])]
    signature = [name for name in inspect.signature(SequenceDataLoader).parameters]
    assert documented == signature


#: How the table writes defaults that are not Python literals.
WRITTEN = {"2 GiB": 2 << 30, "2**30": 2**30, "cores": None}


def test_the_parameters_table_gives_each_parameters_default():
    parameters = inspect.signature(SequenceDataLoader).parameters
    checked = 0
    for row in (line for line in section("Parameters").splitlines() if line.startswith("| `")):
        names_cell, default_cell = row.split("|")[1:3]
        names = re.findall(r"`(\w+)`", names_cell)
        written = [w.strip() for w in default_cell.split(",")] if len(names) > 1 else [default_cell.strip()]
        if len(written) == 1:  # "`mean`, `std` | None": one default for both
            written = written * len(names)
        for name, text in zip(names, written, strict=True):
            default = parameters[name].default
            if default is inspect.Parameter.empty:
                assert text == "", name
            else:
                value = WRITTEN[text] if text in WRITTEN else ast.literal_eval(text)
                assert value == default and type(value) is type(default), (name, text, default)
            checked += 1
    assert checked == len(parameters)


def test_the_keyword_only_boundary_in_the_docs_is_the_signatures():
    first_keyword = re.search(r"Options from `(\w+)` on are keyword-only", section("Parameters")).group(1)
    parameters = inspect.signature(SequenceDataLoader).parameters
    keyword_only = [n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keyword_only[0] == first_keyword


def instance_attributes() -> set[str]:
    """The names ``SequenceDataLoader``'s methods assign to ``self.`` (the constructor wires the
    parts through ``_attach``)."""
    tree = ast.parse(inspect.getsource(SequenceDataLoader))
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name) and node.value.id == "self"}


def test_every_public_member_and_attribute_of_the_loader_is_in_what_you_get():
    table = section("What you get")
    members = {name for name in vars(SequenceDataLoader) if not name.startswith("_")} | instance_attributes()
    public = sorted(name for name in members if not name.startswith("_"))
    assert {"dataset", "dim", "feed"} <= set(public)
    missing = [name for name in public if not re.search(rf"`loader\.{name}\b", table)]
    assert missing == []
