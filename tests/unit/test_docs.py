"""Every link in the Markdown documentation resolves, and the README stays a short map.

Checked: README.md, every docs/*.md and kuberay/README.md. For each link or image
``[text](target)`` (and each reference definition ``[ref]: target``) outside fenced code
blocks and inline code, the target file or folder must exist relative to the linking file,
inside the repository, and a ``#anchor`` must name a heading of the target Markdown file
under GitHub's slug rules (same-file ``#anchor`` links included). http(s) and mailto links
are not followed. Pure file reading: no Ray, no network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250

SKIPPED_SCHEMES = ("http://", "https://", "mailto:")
MARKDOWN_SUFFIXES = (".md", ".markdown")

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
# An inline code span: a run of backticks, then anything but a blank line, then the same run.
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.DOTALL)
# [text](target "title") or ![alt](target); text may hold one level of nested brackets.
_INLINE_LINK = re.compile(
    r"(!?)\[((?:[^\[\]\\]|\\.|\[[^\[\]]*\])*)\]"
    r"\(\s*(<[^>\n]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
_REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[(?!\^)([^\]]+)\]:[ \t]*(<[^>\n]*>|\S+)", re.MULTILINE)
_LINE_ANCHOR = re.compile(r"^L\d+(?:C\d+)?(?:-L\d+(?:C\d+)?)?$")


@dataclass(frozen=True)
class Link:
    """One link as written in a Markdown file."""

    line: int
    text: str
    target: str


def _blank(text: str) -> str:
    """``text`` with every character but newlines replaced by spaces (keeps offsets)."""
    return re.sub(r"[^\n]", " ", text)


def fenced(lines: list[str]) -> list[bool]:
    """For each line, whether it belongs to a fenced code block (fences included)."""
    mask: list[bool] = []
    fence: str | None = None
    for line in lines:
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
            mask.append(fence is not None)
            continue
        mask.append(True)
        if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            if not line.strip().strip(fence[0]):
                fence = None
    return mask


def prose(markdown: str) -> str:
    """``markdown`` with fenced code blocks and inline code spans blanked out.

    Offsets and line numbers are kept, so a match in the result points at the source.
    """
    lines = markdown.split("\n")
    mask = fenced(lines)
    text = "\n".join(_blank(line) if code else line for line, code in zip(lines, mask, strict=True))
    return _CODE_SPAN.sub(lambda m: _blank(m.group(0)), text)


def links(markdown: str) -> list[Link]:
    """Every inline link, image and reference definition outside code, in file order."""
    text = prose(markdown)
    found: list[tuple[int, Link]] = []
    for match in _INLINE_LINK.finditer(text):
        target = match.group(3).strip("<>")
        line = text.count("\n", 0, match.start()) + 1
        label = markdown[match.start() : match.end()]
        found.append((match.start(), Link(line, label, target)))
    for match in _REFERENCE_DEFINITION.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        label = markdown[match.start() : match.end()].strip()
        found.append((match.start(), Link(line, label, match.group(2).strip("<>"))))
    return [link for _, link in sorted(found, key=lambda item: item[0])]


def heading_text(raw: str) -> str:
    """The plain text GitHub renders for a heading's inline Markdown."""
    parts: list[str] = []
    last = 0
    for span in _CODE_SPAN.finditer(raw):
        parts.append(_plain(raw[last : span.start()]))
        parts.append(span.group(2).strip())
        last = span.end()
    parts.append(_plain(raw[last:]))
    return "".join(parts)


def _plain(raw: str) -> str:
    """Inline Markdown outside code spans reduced to its text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = re.sub(r"(\*{1,3})(?=\S)(.+?)(?<=\S)\1", r"\2", text)  # *emphasis*, **strong**
    text = re.sub(r"(?<![\w\\])(_{1,3})(?=\S)(.+?)(?<=\S)\1(?!\w)", r"\2", text)  # _emphasis_
    text = re.sub(r"~~(?=\S)(.+?)(?<=\S)~~", r"\1", text)  # ~~strikethrough~~
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)  # backslash escapes


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped,
    each space a hyphen (runs of hyphens are kept, as GitHub keeps them)."""
    text = heading_text(heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(markdown: str) -> list[str]:
    """The text of every ATX and setext heading outside fenced code, in order (inline code
    is kept: GitHub puts its text into the slug)."""
    lines = markdown.split("\n")
    found: list[str] = []
    paragraph: list[str] = []
    for line, code in zip(lines, fenced(lines), strict=True):
        if code or not line.strip():
            paragraph = []
            continue
        atx = _ATX_HEADING.match(line)
        if atx:
            found.append(atx.group(2) or "")
            paragraph = []
            continue
        if paragraph and _SETEXT_UNDERLINE.match(line) and not _is_block_start(paragraph[0]):
            found.append(" ".join(part.strip() for part in paragraph))
            paragraph = []
            continue
        paragraph.append(line)
    return found


def _is_block_start(line: str) -> bool:
    """Whether ``line`` starts a block that cannot be a setext heading's text."""
    return bool(re.match(r"^ {0,3}(?:[-*+]\s|\d+[.)]\s|>|\||#)", line)) or line.startswith("    ")


def anchors(markdown: str) -> list[str]:
    """The anchors GitHub gives the headings of ``markdown``: a repeated slug gets -1, -2, ...
    (github-slugger's rule, which also skips suffixes already taken)."""
    occurrences: dict[str, int] = {}
    result: list[str] = []
    for heading in headings(markdown):
        slug = original = github_slug(heading)
        while slug in occurrences:
            occurrences[original] += 1
            slug = f"{original}-{occurrences[original]}"
        occurrences[slug] = 0
        result.append(slug)
    return result


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` where it lies inside it, else as given."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def dead_links(md_file: Path, root: Path) -> list[str]:
    """One message per link of ``md_file`` that does not resolve: the file and line, the link,
    and what is missing. ``root`` is the repository root (``/`` targets start there)."""
    text = md_file.read_text(encoding="utf-8")
    name = _relative(md_file, root)
    problems: list[str] = []
    anchor_cache: dict[Path, set[str]] = {}

    def anchors_of(path: Path) -> set[str]:
        if path not in anchor_cache:
            anchor_cache[path] = set(anchors(path.read_text(encoding="utf-8")))
        return anchor_cache[path]

    for link in links(text):
        target = link.target
        where = f"{name}:{link.line}: {link.text}"
        if not target:
            problems.append(f"{where}: empty link target")
            continue
        if target.lower().startswith(SKIPPED_SCHEMES):
            continue
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part.split("?", 1)[0])
        anchor = unquote(anchor)
        if not path_part:
            destination = md_file
        elif path_part.startswith("/"):
            destination = root / path_part.lstrip("/")
        else:
            destination = md_file.parent / path_part
        shown = _relative(destination, root)
        if not destination.resolve().is_relative_to(root.resolve()):
            problems.append(f"{where}: {path_part!r} points outside the repository")
            continue
        if not destination.exists():
            problems.append(f"{where}: file or folder {shown} does not exist")
            continue
        if not anchor:  # no anchor, or a bare "#": the top of the target
            continue
        if destination.is_dir():
            problems.append(f"{where}: anchor #{anchor} on the folder {shown}")
        elif destination.suffix.lower() in MARKDOWN_SUFFIXES:
            if anchor not in anchors_of(destination):
                problems.append(f"{where}: no heading with anchor #{anchor} in {shown}")
        elif not _LINE_ANCHOR.match(anchor):
            problems.append(f"{where}: anchor #{anchor} on {shown}, which is not Markdown")
    return problems


def checked_files() -> list[Path]:
    """The Markdown files whose links the suite checks."""
    return [README, *sorted(DOCS.glob("*.md")), ROOT / "kuberay" / "README.md"]


@pytest.mark.parametrize("md_file", checked_files(), ids=lambda p: _relative(p, ROOT))
def test_every_link_resolves(md_file: Path) -> None:
    """Links to files, folders and headings in the shipped docs all resolve."""
    assert md_file.is_file(), f"{_relative(md_file, ROOT)} is missing"
    problems = dead_links(md_file, ROOT)
    assert not problems, "dead links:\n" + "\n".join(problems)


def test_docs_folder_exists() -> None:
    """The documentation was split into docs/ (the link checks cover its files)."""
    assert sorted(DOCS.glob("*.md")), "docs/ holds no Markdown files"


def test_readme_is_short() -> None:
    """README.md stays a short entry point; the details live in docs/."""
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, more than {README_MAX_LINES}: move a section to docs/"
    )


def test_every_docs_file_is_linked_from_readme() -> None:
    """Each docs/*.md is reachable from the README's documentation map."""
    linked = set()
    for link in links(README.read_text(encoding="utf-8")):
        path_part = unquote(link.target.partition("#")[0])
        if path_part and not link.target.lower().startswith(SKIPPED_SCHEMES):
            linked.add((README.parent / path_part).resolve())
    missing = [
        _relative(doc, ROOT) for doc in sorted(DOCS.glob("*.md")) if doc.resolve() not in linked
    ]
    assert not missing, f"README.md links to none of: {', '.join(missing)}"


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("HTTP API (Open Inference Protocol v2)", "http-api-open-inference-protocol-v2"),
        (
            "Model lifecycle: rollout, versions side by side, canary",
            "model-lifecycle-rollout-versions-side-by-side-canary",
        ),
        ("1. Build the images", "1-build-the-images"),
        ("GCS fault tolerance (opt-in)", "gcs-fault-tolerance-opt-in"),
        ("The `serve_app/` package", "the-serve_app-package"),
        ("**Bold** and _emphasis_ and snake_case_name", "bold-and-emphasis-and-snake_case_name"),
        ("v1 -> v2", "v1---v2"),
        ("A [linked](other.md) heading", "a-linked-heading"),
        ("Ünïcode wörds", "ünïcode-wörds"),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    """Slugs follow GitHub's rules."""
    assert github_slug(heading) == slug


def test_duplicate_headings_get_numbered_anchors() -> None:
    """Repeated headings get -1, -2, ...; a suffix already taken is skipped."""
    markdown = "# A\n\n## A\n\nText\n---\n\n```\n# not a heading\n```\n\n### A\n\n# A-1\n"
    assert anchors(markdown) == ["a", "a-1", "text", "a-2", "a-1-1"]


def test_checker_reports_dead_file_and_dead_anchor(tmp_path: Path) -> None:
    """The checker is able to fail: a missing file, a missing heading (in another file and in
    the same one) and a path out of the repository are reported, while good links, skipped
    schemes and links in code are not."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Real part\n\n## Real part\n")
    (tmp_path / "data.json").write_text("{}\n")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n"
        "## Local (section)\n\n"
        "Good: [other](other.md), [part](other.md#real-part), [dup](other.md#real-part-1),\n"
        "[self](#local-section), [up](../data.json), [folder](../docs/), ![img](other.md),\n"
        "[web](https://example.com/x.md#nope), [mail](mailto:a@b.c), `[code](gone.md)`.\n\n"
        "Dead: [gone](missing.md) and [bad anchor](other.md#no-such-part)\n"
        "and [bad self](#nowhere) and [out](../../elsewhere.md).\n\n"
        "```\n[fenced](also-missing.md)\n```\n"
    )
    problems = dead_links(page, tmp_path)
    assert problems == [
        "docs/page.md:9: [gone](missing.md): file or folder docs/missing.md does not exist",
        "docs/page.md:9: [bad anchor](other.md#no-such-part): "
        "no heading with anchor #no-such-part in docs/other.md",
        "docs/page.md:10: [bad self](#nowhere): no heading with anchor #nowhere in docs/page.md",
        "docs/page.md:10: [out](../../elsewhere.md): '../../elsewhere.md' points outside the "
        "repository",
    ]
