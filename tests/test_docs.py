"""The docs stay true and navigable: the README is a short landing page, every relative link and
anchor of the README and docs/ resolves, every page links back to the README, and every option of
every ``dalidw`` command has help that names its default."""

import argparse
import re
from pathlib import Path
from unittest import mock

import pytest

from dalidw.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, whose brackets and hashes are not Markdown."""
    text = re.sub(r"^```.*?^```[^\n]*$", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, spaces to '-', punctuation other than '-' and '_' dropped."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    text = re.sub(r"^```.*?^```[^\n]*$", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?)[ #]*$", text, flags=re.MULTILINE):
        base = slug(heading)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def links(path: Path) -> list[str]:
    """The targets of a Markdown file's links and images, code left out."""
    return re.findall(r"\]\(([^)\s]+)\)", prose(path.read_text(encoding="utf-8")))


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    return broken


def test_the_readme_is_a_short_landing_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    assert "make demo" in "\n".join(lines) and "make test" in "\n".join(lines)


def test_the_guide_has_its_pages():
    names = {page.name for page in PAGES}
    assert {"loader.md", "data.md", "cli.md", "gpu.md", "performance.md", "limits.md"} <= names
    listed = set(re.findall(r"\(docs/([\w-]+\.md)\)", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert listed == names - {"README.md"}, "the README's guide should link every page of docs/"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(path):
    assert links(path), f"{path.name} links nowhere"
    assert broken_links(path) == []


@pytest.mark.parametrize("path", PAGES[1:], ids=lambda p: p.name)
def test_a_page_of_the_guide_has_a_title_a_summary_and_a_way_back(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert re.match(r"# \S", lines[0]) and lines[1] == "" and lines[2].strip(), path.name
    opening = "\n".join(lines[:6])
    assert "(../README.md)" in opening, f"{path.name} should link back to the README near its top"


def test_the_slugs_follow_githubs_rules():
    assert slug("Bad data: one error, up front") == "bad-data-one-error-up-front"
    assert slug("TensorFlow's CPU allocator matters more than the loader") == \
        "tensorflows-cpu-allocator-matters-more-than-the-loader"
    assert slug("Why whole regions, not `fn.decoders.image_slice` per tile") == \
        "why-whole-regions-not-fndecodersimage_slice-per-tile"
    assert slug("Several machines (`MultiWorkerMirroredStrategy`)") == "several-machines-multiworkermirroredstrategy"


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "a.md").write_text("# A\n\n## Two words\n\n[ok](#two-words) [no](#three) [gone](b.md)\n"
                                   "`[code](c.md)`\n```\n[block](d.md)\n```\n", encoding="utf-8")
    assert broken_links(tmp_path / "a.md") == ["#three: no heading #three in a.md", "b.md: no such file"]


def help_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The actions ``parser --help`` lists, as its help formatter is handed them."""
    shown = []
    add_argument = argparse.HelpFormatter.add_argument

    def record(formatter, action):
        shown.append(action)
        return add_argument(formatter, action)

    with mock.patch.object(argparse.HelpFormatter, "add_argument", record):
        parser.format_help()
    return shown


def commands() -> dict[str, argparse.ArgumentParser]:
    """The subcommands of ``dalidw``, name -> parser."""
    found = {}
    for action in help_actions(build_parser()):
        if isinstance(action.choices, dict):
            found.update(action.choices)
    return found


def test_dalidw_help_names_every_command_with_one_line():
    text = build_parser().format_help()
    assert set(commands()) == {"synth", "tiles", "check", "show", "train", "demo", "bench"}
    for name in commands():
        assert re.search(rf"^    {name} +\S", text, re.MULTILINE), f"{name} has no line in dalidw --help"


@pytest.mark.parametrize("name", ["dalidw", "synth", "tiles", "check", "show", "train", "demo", "bench"])
def test_every_option_has_help_that_names_its_default(name):
    parser = build_parser() if name == "dalidw" else commands()[name]
    checked = 0
    for action in help_actions(parser):
        if "-h" in action.option_strings:
            continue
        shown = action.option_strings or [action.dest]
        assert action.help and action.help.strip(), f"dalidw {name} {shown}: no help"
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            written = re.search(r"\(default: ([^),;]+)", action.help)
            assert "%(default)s" in action.help or written, f"dalidw {name} {shown}: the help names no default"
            if "%(default)s" not in action.help:
                value = action.type(written.group(1)) if action.type else written.group(1)
                assert value == action.default, f"dalidw {name} {shown}: help says {written.group(1)}"
        checked += 1
    assert checked >= 2

