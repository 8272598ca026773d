"""README.md and docs/: the README stays short, and what the pages point at exists.

Links are checked as GitHub renders them: a relative link names a file of the repository, and its
#anchor a heading of that file (GitHub's slugs: lower case, punctuation dropped, spaces to hyphens).
Commands in the pages' bash blocks must parse with vaegen's own command line.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections import Counter
from pathlib import Path

import pytest

from vaegen.apps import gallery
from vaegen.apps.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_LIMIT = 10 * 1024  # bytes
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
PAGE_IDS = [str(page.relative_to(REPO)) for page in PAGES]

FENCE = re.compile(r"^(```|~~~)[^\n]*\n.*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def github_slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: Counter[str] = Counter()
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        slug = github_slug(heading)
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")  # GitHub numbers repeated headings
        seen[slug] += 1
    return found


def relative_links(page: Path) -> list[str]:
    prose = INLINE_CODE.sub("", FENCE.sub("", page.read_text()))
    return [target for target in LINK.findall(prose) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def broken(page: Path, target: str) -> str | None:
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return f"{target}: no file {file.relative_to(REPO) if file.is_relative_to(REPO) else file}"
    if not file.is_relative_to(REPO):
        return f"{target}: outside the repository"
    if anchor and anchor not in anchors(file):
        return f"{target}: no heading #{anchor} in {file.relative_to(REPO)}"
    return None


def bash_commands(page: Path) -> list[str]:
    lines = []
    for block in re.findall(r"^```(?:bash|sh|console)\n(.*?)^```", page.read_text(), re.MULTILINE | re.DOTALL):
        lines += block.replace("\\\n", " ").splitlines()
    return lines


def vaegen_argv(line: str) -> list[str] | None:
    """The arguments after `vaegen` (or `python -m vaegen`, `torchrun ... -m vaegen`) in a shell line."""
    words = shlex.split(re.sub(r"<[^<>]*>", "PLACEHOLDER", line), comments=True)  # <run>, <extracted Fruit-360>
    for i, word in enumerate(words):
        if word == "vaegen" or word.endswith("/vaegen"):
            if i == 0 or words[i - 1] == "-m":
                return words[i + 1:]
    return None


def test_readme_is_at_most_10_kb():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move reference material to docs/ (limit {README_LIMIT})"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_relative_link_resolves_to_a_file_and_heading(page):
    problems = [problem for target in relative_links(page) if (problem := broken(page, target))]
    assert not problems, f"{page.relative_to(REPO)}: " + "; ".join(problems)


def test_readme_links_to_every_docs_page():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)}
    missing = [page.name for page in PAGES[1:] if page.resolve() not in linked]
    assert not missing, f"docs pages the README does not link to: {missing}"


def test_the_link_checker_catches_broken_links(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Resume `--resume`\n\n## Resume `--resume`\n\n```\n# not a heading\n```\n")
    page = tmp_path / "README.md"
    good = ["docs/guide.md", "docs/guide.md#guide", "docs/guide.md#resume---resume", "docs/guide.md#resume---resume-1", "#top"]
    page.write_text("# Top\n" + " ".join(f"[x]({target})" for target in good)
                    + " `[in code](nowhere.md)` [web](https://example.com/missing)\n")
    assert [broken(page, target) for target in relative_links(page)] == [None] * len(good)
    for target in ["docs/gone.md", "docs/guide.md#not-a-heading", "docs/guide.md#not-a-heading-1", "docs/guide.md#resume---resume-2"]:
        assert broken(page, target) is not None, target


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_repository_paths_named_in_the_pages_exist(page):
    text = page.read_text()
    named = set(re.findall(r"(?<![\w/.])((?:configs|scripts)/[\w.-]+\.(?:yaml|sh|py))", text))
    assert not [path for path in sorted(named) if not (REPO / path).exists()]


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_vaegen_commands_in_the_pages_parse(page):
    parser = build_parser()
    for line in bash_commands(page):
        argv = vaegen_argv(line)
        if argv is None:
            continue
        try:
            parser.parse_args(argv)
        except SystemExit as exit:
            pytest.fail(f"{page.relative_to(REPO)}: `{line.strip()}` does not parse (exit {exit.code})")


def test_the_readme_two_commands_are_scripts_of_the_repository():
    lines = [line.split("#")[0].strip() for line in bash_commands(README)]
    for command in ["bash scripts/quickstart.sh", "bash scripts/test.sh"]:
        assert command in lines
        assert (REPO / command.split()[1]).is_file()


def test_gallery_and_readme_name_the_same_quickstart_and_time(tmp_path):
    # the gallery's empty page sends a newcomer to the README's first command, and says how long it takes
    text = gallery.how_to_train(tmp_path)
    assert gallery.QUICKSTART in [line.split("#")[0].strip() for line in bash_commands(README)]
    promised = re.search(r"about (\w+ minutes?)", text)
    assert promised, "the gallery's empty page no longer says how long the quickstart takes"
    assert f"about {promised[1]}" in README.read_text()
