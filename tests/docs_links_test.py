"""The documentation's relative links resolve: every `[text](path)` and `[text](path#anchor)` in
README.md, CONTRIBUTING.md, CHANGELOG.md, bench/README.md and docs/*.md names a file or folder that
exists, and every #anchor matches a heading of the target file by GitHub's slug rule.

External links (http:, https:, mailto:) are not followed. Fenced code blocks and inline code are
not links. The checker itself is tested on small good and bad examples.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "CONTRIBUTING.md", "CHANGELOG.md", "bench/README.md", "docs/*.md")

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def documents(root: Path = REPO) -> List[Path]:
    found: List[Path] = []
    for pattern in DOCUMENTS:
        found.extend(sorted(root.glob(pattern)))
    return found


def _prose_lines(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text: inline markup dropped, lower case, punctuation other
    than '-' and '_' removed, each space a '-'."""
    text = _INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    """The anchors of a Markdown file's headings, with GitHub's -1, -2... for repeated ones."""
    seen: Dict[str, int] = {}
    result = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(path: Path) -> Iterator[Tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition."""
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        reference = _REFERENCE.match(line)
        if reference:
            yield number, reference.group(1)
            continue
        prose = _INLINE_CODE.sub("", line)
        for match in _INLINE_LINK.finditer(prose):
            yield number, match.group(1)


def broken_links(path: Path, root: Path = REPO) -> List[str]:
    """One message per relative link of `path` whose file or #anchor does not exist."""
    problems = []
    where = path.relative_to(root) if path.is_relative_to(root) else path
    for number, target in links(path):
        if _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            problems.append(f"{where}:{number}: {target}: no such file or folder")
            continue
        if anchor:
            if destination.is_dir() or destination.suffix.lower() != ".md":
                problems.append(f"{where}:{number}: {target}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(destination):
                problems.append(f"{where}:{number}: {target}: no heading with anchor #{anchor} in {destination.name}")
    return problems


# --------------------------------------------------------------------------- the repository
def test_the_documents_exist():
    names = {str(p.relative_to(REPO)) for p in documents()}
    for required in ("README.md", "CONTRIBUTING.md", "CHANGELOG.md", "bench/README.md", "docs/usage.md"):
        assert required in names, f"{required} is missing"


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(path):
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


# --------------------------------------------------------------------------- the checker
def test_slug_follows_githubs_rule():
    assert slug("The two commands") == "the-two-commands"
    assert slug("`triplet-tfx run`") == "triplet-tfx-run"
    assert slug("run: training on several devices or workers") == "run-training-on-several-devices-or-workers"
    assert slug("1. Build and push the images") == "1-build-and-push-the-images"
    assert slug("Training on several workers (TFJob)") == "training-on-several-workers-tfjob"
    assert slug("Unseen 0-4 → 5-9") == "unseen-0-4--5-9"
    assert slug("[docs](docs/usage.md) and `run_fn`") == "docs-and-run_fn"


def test_checker_accepts_good_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## Flags: `--data`\n\n## Notes\n\n## Notes\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Title\n\n## Quick start\n\n"
        "[page](docs/page.md), [flags](docs/page.md#flags---data), [second notes](docs/page.md#notes-1),\n"
        "[here](#quick-start), [folder](docs/), [web](https://example.com/x#y), `[not](a-link.md)`\n\n"
        "```\n[inside a fence](missing.md)\n```\n\n[ref]: docs/page.md#notes\n"
    )
    assert broken_links(readme, tmp_path) == []


def test_checker_reports_each_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## Flags\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Title\n\n"
        "[gone](docs/missing.md)\n"
        "[bad anchor](docs/page.md#no-such-heading)\n"
        "[bad local anchor](#nowhere)\n"
        "[ref]: docs/other.md\n"
    )
    problems = broken_links(readme, tmp_path)
    assert len(problems) == 4, problems
    assert "README.md:3: docs/missing.md: no such file or folder" in problems[0]
    assert "#no-such-heading" in problems[1] and "page.md" in problems[1]
    assert "#nowhere" in problems[2]
    assert "docs/other.md" in problems[3]
