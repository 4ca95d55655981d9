"""The documentation holds together (issue 26): links resolve, the CLI reference names every
command and option, the API reference names every public name, the README stays short, and the
benchmark pages are exactly what the stored results render to."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

import packtool
from benchmarks import report
from benchmarks.parts import renderers
from packtool.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    spaces as ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # headings, not comments
    return {slug(m[1]) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_resolves(page):
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert file.suffix == ".md" and anchor in anchors(file), (
                f"{page.name}: no heading #{anchor} in {file.name}")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_points_to_a_section_by_position(page):
    """"(below)" and "(see above)" pointed to sections that did not exist: a reference to
    another part of the docs is a link, which the test above resolves."""
    assert not re.search(r"\((?:see )?(?:below|above)\)", page.read_text(), flags=re.I)


def test_the_cli_reference_names_every_command_and_option():
    text = (ROOT / "docs" / "cli.md").read_text()
    missing = []
    for name, command in main.commands.items():
        if f"packtool {name}" not in text:
            missing.append(f"packtool {name}")
        for param in command.params:
            if isinstance(param, click.Option):
                missing += [f"{name} {o}" for o in param.opts if o.startswith("--")
                            and not re.search(re.escape(o) + r"\b", text)]
    missing += [o for p in main.params for o in p.opts if o not in text]
    assert missing == []


def test_the_api_reference_names_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text()
    assert len(packtool.__all__) <= 30
    documented = set(re.findall(r"^\| `(\w+)", text, flags=re.M))
    assert set(packtool.__all__) <= documented, set(packtool.__all__) - documented
    for name in packtool.__all__:
        assert getattr(packtool, name) is not None


def test_the_readme_is_a_newcomers_page():
    assert len((ROOT / "README.md").read_text().splitlines()) < 250


def test_benchmark_pages_are_rendered_from_the_stored_results():
    parts = report.stored()
    assert set(parts) == set(renderers())  # every part has a recorded full-mode result
    assert all(doc["mode"] == "full" for doc in parts.values())
    assert report.PAGE.read_text() == report.page(parts, renderers())
    readme = (ROOT / "README.md").read_text()
    assert report.with_headline(readme, report.headline(parts)) == readme
