"""The README and docs/ as a newcomer meets them: short, every link lands, each page says what it is
for, and no page narrates how the work was organised (that is what commit messages are for)."""

import re
from pathlib import Path

import pytest

from objdetect_serving.paths import ROOT

pytestmark = pytest.mark.unit

PAGES = [ROOT / "README.md", ROOT / "terraform" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Pages scripts/bench.py writes: their machine section records the commit each run measured.
GENERATED = {ROOT / "docs" / name for name in ("benchmarks.md", "benchmarks-fp32-cpu.md", "benchmarks-switches.md", "benchmarks-models.md")}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(match) for match in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_the_readme_reads_in_five_minutes():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines; depth belongs in docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_lands_on_a_file_and_heading(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no such heading in {linked.relative_to(ROOT)}")
    assert not broken, broken


@pytest.mark.parametrize("name", ["api", "client", "operations", "performance", "security", "testing", "releases"])
def test_each_docs_page_starts_with_what_it_is_for(name):
    opening = (ROOT / "docs" / f"{name}.md").read_text().split("\n\n")[1]
    assert opening.startswith("What this page is for:"), opening


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_no_page_narrates_how_the_work_was_organised(page):
    text = page.read_text()
    found = re.findall(r"\bissue \d+|\b(?:this|next|earlier|previous) sessions?\b|throwaway|not kept", text, re.I)
    if page not in GENERATED:
        found += re.findall(r"\b(?:at )?commit [0-9a-f]{7,}", text)
    assert not found, found
