"""The README is the one home of the loader's option and method documentation: its tables name
every parameter, in the order of the signature, and every public member."""

import inspect
import re
from pathlib import Path

from dalidw import SequenceDataLoader

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    start = README.index(f"### {title}\n")
    return README[start : README.index("\n### ", start + 1)]


def test_the_parameters_table_names_every_parameter_in_signature_order():
    rows = [line for line in section("Parameters").splitlines() if line.startswith("| `")]
    documented = [name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])]
    signature = [name for name in inspect.signature(SequenceDataLoader).parameters]
    assert documented == signature


def test_the_keyword_only_boundary_in_the_readme_is_the_signatures():
    first_keyword = re.search(r"Options from `(\w+)` on are keyword-only", README).group(1)
    parameters = inspect.signature(SequenceDataLoader).parameters
    keyword_only = [n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keyword_only[0] == first_keyword


def test_every_public_member_of_the_loader_is_in_what_you_get():
    table = section("What you get")
    members = [name for name in vars(SequenceDataLoader) if not name.startswith("_")]
    assert members, "the loader has public members"
    missing = [name for name in members if f"`loader.{name}" not in table]
    assert missing == []
