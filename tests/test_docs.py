"""The documentation's shape: short README and BUILD_NOTES, one docs page per task starting with
its commands, notes pages with their header block, and no broken relative link (issue 38).

Plain file reads only: no TensorFlow, well under a second.
"""
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
BUILD_NOTES = os.path.join(REPO, "BUILD_NOTES.md")
# Pages that are not a task's page, so need not open with a code block.
NOT_TASK_PAGES = {"README.md", "common-mistakes.md"}
NOTES_FIELDS = ("Question", "Verdict", "Data", "Reproduce", "Machine and date")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def docs_pages():
    return sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def notes_pages():
    return sorted(glob.glob(os.path.join(REPO, "notes", "*.md")))


def markdown_files():
    return [README, BUILD_NOTES] + docs_pages() + notes_pages()


def without_code(text):
    """The text with fenced code blocks and inline code spans removed (links there are not links)."""
    text = re.sub(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", text, flags=re.S)


def link_targets(text):
    """Targets of inline links and images, and of reference definitions."""
    text = without_code(text)
    targets = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'(][^)]*)?\)", text)
    targets += re.findall(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, flags=re.M)
    return targets


def first_content_line(text):
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line
    return ""


def rel(path):
    return os.path.relpath(path, REPO)


def test_readme_is_short():
    assert len(read(README).splitlines()) <= 250


def test_build_notes_is_an_index():
    assert len(read(BUILD_NOTES).splitlines()) <= 300


def test_readme_keeps_the_test_command_and_the_zoo_table_markers():
    text = read(README)
    lines = text.splitlines()
    assert any(line.startswith(".venv/bin/python -m pytest") for line in lines)
    # .ci/run greps the first such line; it must sit in the first ```bash block, the set-up one.
    first_block = re.search(r"^```bash\n(.*?)^```", text, flags=re.S | re.M).group(1)
    assert re.search(r"^\.venv/bin/python -m pytest", first_block, flags=re.M)
    assert "<!-- zoo-table:begin -->" in text and "<!-- zoo-table:end -->" in text


def test_there_is_a_page_per_task():
    pages = [p for p in docs_pages() if os.path.basename(p) not in NOT_TASK_PAGES]
    assert len(pages) >= 8, [rel(p) for p in pages]
    assert os.path.exists(os.path.join(REPO, "docs", "common-mistakes.md"))


@pytest.mark.parametrize("page", [p for p in docs_pages() if os.path.basename(p) not in NOT_TASK_PAGES],
                         ids=os.path.basename)
def test_a_docs_page_starts_with_its_commands(page):
    first = first_content_line(read(page))
    assert first.lstrip().startswith(("```", "~~~")), f"{rel(page)} starts with {first!r}"


@pytest.mark.parametrize("page", notes_pages(), ids=os.path.basename)
def test_a_notes_page_opens_with_its_header_block(page):
    text = read(page)
    head = text.split("\n## ", 1)[0]     # the header block comes before the first section
    for field in NOTES_FIELDS:
        match = re.search(rf"^\s*(?:[-*]\s+)?\*\*{field}[:.]?\*\*[:.]?\s*(\S.*)$", head, flags=re.M)
        assert match, f"{rel(page)} lacks **{field}:** in its header block"
        if field == "Verdict":
            assert re.search(r"\d", match.group(1)), f"{rel(page)}: the verdict gives no number"


def test_there_are_notes_pages_and_the_index_links_each():
    pages = notes_pages()
    assert pages
    index = read(BUILD_NOTES)
    for page in pages:
        assert f"notes/{os.path.basename(page)}" in index, f"BUILD_NOTES.md does not link {rel(page)}"


@pytest.mark.parametrize("path", markdown_files(), ids=rel)
def test_relative_links_resolve(path):
    missing = []
    for target in link_targets(read(path)):
        if re.match(r"(?i)(https?:|mailto:|#)", target):
            continue
        target = target.split("#", 1)[0].split("?", 1)[0]
        if not target:
            continue
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
        if not os.path.exists(resolved):
            missing.append(target)
    assert not missing, f"{rel(path)}: broken links {missing}"


def test_the_link_checker_sees_links_and_skips_code():
    text = ("[a](x.md) ![img](p/q.png \"t\") [b](https://e.org) `[c](code.md)`\n"
            "```\n[d](block.md)\n```\n[ref]: r.md\n")
    assert link_targets(text) == ["x.md", "p/q.png", "https://e.org", "r.md"]
