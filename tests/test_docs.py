"""The mathematics belongs to the project: docs/math.md.

Code and documentation cite sections of docs/math.md by heading, in the
form  <docs/math.md>, "<Heading>"  (several headings may follow, joined by
"and" or commas; a citation may wrap over comment or docstring lines).
These tests scan every text file of the repository (read-only) and check:

- docs/math.md exists, its headings are unique, it has the sections the
  code relies on, and its in-page links resolve;
- every cited section exists (also the forms ``§N`` and ``#anchor``, and
  the forms without the comma or inside parentheses, so that no citation
  escapes the check);
- no file depends on a path outside the repository (the old external spec
  file or the parent's shared folder), and no file cites the old external
  spec's numbered sections.

The parser is tested on synthetic text too, so that a citation of a missing
section demonstrably makes the scan fail.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
MATH = ROOT / "docs" / "math.md"
# Assembled, so that this file's own text holds no citation to check.
DOC = "docs/math" + ".md"

#: The top-level sections the code and the kernels are written against.
SECTIONS = ("Conventions", "Schedulers", "Parameterizations", "Weightings",
            "The diffusion loss", "Sampler steps", "The coefficient algebra",
            "The optimal denoiser", "Counter-based noise", "The kernels")

#: Where the numbered sections of the old external spec now live.
FORMER_SECTIONS = {1: "Conventions", 2: "Schedulers", 3: "Parameterizations",
                   4: "Weightings", 5: "The diffusion loss",
                   6: "Sampler steps", 7: "The coefficient algebra",
                   8: "The optimal denoiser", 9: "Counter-based noise"}

# Directories that are not the project's text: VCS data, environments,
# caches, build outputs, run outputs and downloaded data.
_PRUNE = {".git", ".venv", "venv", "__pycache__", "build", "dist", "runs",
          "out", "node_modules"}
_PRUNE_PATHS = {Path("examples/lorenz96/data")}
_MAX_BYTES = 2 * 1024 * 1024

# A name starts with a word character: `open(<path>, "r")` is no citation.
_NAME = r'"(\w[^"]*)"'
# A line break inside a citation, with the next line's comment marker.
_WRAP = re.compile(r"[ \t]*\r?\n[ \t]*(?://+|#+|\*(?!/)|;+|--)?[ \t]*")
_QUOTED = re.compile(r"\s*[,:]?\s*\(?\s*" + _NAME
                     + r"((?:\s*(?:,|;|&|\band\b|\bor\b)\s*" + _NAME + r")*)")
_NUMBERED = re.compile(r"\s*[,:]?\s*\(?\s*§\s*(\d+)")
_ANCHOR = re.compile(r"#([\w-]+)")

_OUTSIDE = [re.compile(r"SPEC\.md"), re.compile(r"\.\./shared\b"),
            re.compile(r"\bshared/SPEC\b")]
_FORMER_CITATION = re.compile(r"\bSPEC\s*§\s*(\d+)")


# ------------------------------------------------------------- helpers
def text_files() -> Iterator[Tuple[Path, str]]:
    """(path relative to the root, text) of every text file of the tree."""
    for folder, dirs, files in os.walk(ROOT):
        rel_folder = Path(folder).relative_to(ROOT)
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".") and d not in _PRUNE
            and not d.endswith(".egg-info")
            and rel_folder / d not in _PRUNE_PATHS)
        for name in sorted(files):
            path = Path(folder) / name
            try:
                if path.stat().st_size > _MAX_BYTES:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            if b"\0" in data[:8192]:
                continue  # binary
            yield path.relative_to(ROOT), data.decode("utf-8", "replace")


def heading_levels(markdown: str) -> List[Tuple[int, str]]:
    """(level, text) of the headings of a Markdown page, outside fenced
    code."""
    found, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"(#{1,6})\s+(.+?)\s*#*\s*$", line)
        if match:
            found.append((len(match.group(1)), match.group(2)))
    return found


def headings(markdown: str) -> List[str]:
    """The heading texts of a Markdown page, any level."""
    return [text for _, text in heading_levels(markdown)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    kept = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return kept.replace(" ", "-")


def citations(text: str) -> Iterator[Tuple[int, str, str]]:
    """(line, kind, value) of every section cited after a mention of the
    page; kind is "heading", "number" or "anchor". A bare mention (the page
    as a whole) yields nothing."""
    for mention in re.finditer(re.escape(DOC), text):
        line = text.count("\n", 0, mention.start()) + 1
        tail = text[mention.end():mention.end() + 600]
        tail = tail.replace("\u201c", '"').replace("\u201d", '"')
        tail = _WRAP.sub(" ", tail)
        anchor = _ANCHOR.match(tail)
        if anchor:
            yield line, "anchor", anchor.group(1)
            continue
        number = _NUMBERED.match(tail)
        if number:
            yield line, "number", number.group(1)
            continue
        quoted = _QUOTED.match(tail)
        if quoted:
            yield line, "heading", quoted.group(1)
            for name in re.findall(_NAME, quoted.group(2)):
                yield line, "heading", name


def unresolved(text: str, page_headings: List[str]) -> List[Tuple[int, str]]:
    """(line, description) of each citation in ``text`` that names no
    section of a page with ``page_headings``."""
    names = {" ".join(h.split()) for h in page_headings}
    anchors = {slug(h) for h in page_headings}
    numbers = {m.group(1) for h in page_headings
               for m in [re.match(r"(\d+)[.)]?\s", h)] if m}
    bad = []
    for line, kind, value in citations(text):
        if kind == "heading" and " ".join(value.split()) not in names:
            bad.append((line, f'"{value}"'))
        elif kind == "number" and value not in numbers:
            bad.append((line, f"§{value}"))
        elif kind == "anchor" and value not in anchors:
            bad.append((line, f"#{value}"))
    return bad


@pytest.fixture(scope="module")
def page_headings() -> List[str]:
    assert MATH.is_file(), "docs/math.md is missing"
    return headings(MATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def files() -> Dict[Path, str]:
    return dict(text_files())


# ------------------------------------------------------------ the page
def test_math_doc_has_unique_stable_headings(page_headings):
    assert page_headings, "docs/math.md has no headings"
    duplicates = {h for h in page_headings if page_headings.count(h) > 1}
    assert not duplicates, f"repeated headings in docs/math.md: {duplicates}"
    slugs = [slug(h) for h in page_headings]
    assert len(set(slugs)) == len(slugs), "two headings share an anchor"
    top = [text for level, text in
           heading_levels(MATH.read_text(encoding="utf-8")) if level == 2]
    missing = [s for s in SECTIONS if s not in top]
    assert not missing, f"docs/math.md lacks the sections {missing}"


def test_math_doc_in_page_links_resolve(page_headings):
    text = MATH.read_text(encoding="utf-8")
    anchors = {slug(h) for h in page_headings}
    broken = [a for a in re.findall(r"\]\(#([^)]+)\)", text) if a not in anchors]
    assert not broken, f"docs/math.md links to missing anchors: {broken}"


# ------------------------------------------------------- the citations
def test_every_cited_section_exists(files, page_headings):
    bad = [f"{path}:{line}: {what}"
           for path, text in files.items()
           for line, what in unresolved(text, page_headings)]
    assert not bad, (
        "citations of sections that docs/math.md does not have (cite them as "
        f'{DOC}, "<Heading>" with an existing heading):\n  '
        + "\n  ".join(bad) + "\nheadings: " + "; ".join(page_headings))


def test_scan_sees_the_citations_of_the_package(files):
    """Guards the scan itself: citations in each form the package uses
    (one line, wrapped after the comma, several headings) are found."""
    found = {(path.as_posix(), value) for path, text in files.items()
             for _, kind, value in citations(text) if kind == "heading"}
    for expected in [("ddm_fast/ops/__init__.py", "The kernels"),
                     ("ddm_fast/ops/__init__.py", "Counter-based noise"),
                     ("ddm_fast/_math.py", "Conventions"),
                     ("ddm_fast/backends/reference.py", "The kernels"),
                     ("ddm_fast/backends/reference.py", "Counter-based noise"),
                     ("ddm_fast/sampler/__init__.py", "Sampler steps"),
                     ("ddm_fast/sampler/__init__.py", "The coefficient algebra"),
                     ("ddm_fast/loss.py", "The diffusion loss"),
                     ("README.md", "The diffusion loss")]:
        assert expected in found, f"the scan missed the citation {expected}"


MISSING = "No such section"


@pytest.mark.parametrize("form", [
    DOC + ', "{}"',
    DOC + ' "{}"',
    "(" + DOC + ', "{}")',
    DOC + ' ("{}")',
    DOC + ': "{}"',
    DOC + ', "Conventions" and "{}"',
    DOC + ', "Conventions", "{}"',
    DOC + ",\n    \"{}\").",                       # docstring, wrapped
    "# see " + DOC + ",\n# \"{}\"",                 # Python comment, wrapped
    "// see " + DOC + ", \"No such\n// section\"",  # C++ comment, wrapped name
    " * see " + DOC + ",\n * \"{}\"",               # C block comment
    DOC + ", \u201c{}\u201d",                       # typographic quotes
])
def test_a_citation_of_a_missing_heading_fails(form, page_headings):
    text = form.format(MISSING)
    assert unresolved(text, page_headings), f"not caught: {text!r}"
    good = text.replace("No such\n// section", "Counter-based\n// noise") \
        .replace(MISSING, "Counter-based noise")
    assert not unresolved(good, page_headings), f"false alarm: {good!r}"
    assert list(citations(good)), f"citation not seen: {good!r}"


@pytest.mark.parametrize("form", [DOC + " §42", DOC + ", §42", DOC + "#no-such",
                                  "(" + DOC + "#no-such)"])
def test_a_numbered_or_anchored_citation_of_a_missing_section_fails(
        form, page_headings):
    assert unresolved(form, page_headings), f"not caught: {form!r}"


def test_anchor_of_an_existing_section_passes(page_headings):
    assert not unresolved("[x](" + DOC + "#counter-based-noise)", page_headings)


@pytest.mark.parametrize("text", ["see " + DOC + ".", "[" + DOC + "](" + DOC + ")",
                                  "open(\"" + DOC + "\", \"r\")",
                                  DOC + '"""\n    x = "y"'])
def test_a_bare_mention_is_no_citation(text):
    assert not list(citations(text))


# -------------------------------------------- no path outside the repo
def test_no_file_depends_on_a_path_outside_the_repository(files):
    bad = [f"{path}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
           for path, text in files.items()
           for pattern in _OUTSIDE for m in pattern.finditer(text)]
    assert not bad, ("files refer to a path outside the repository; cite "
                     f"{DOC} instead:\n  " + "\n  ".join(bad))


def test_no_file_cites_the_former_external_sections(files):
    bad = []
    for path, text in files.items():
        for m in _FORMER_CITATION.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            heading = FORMER_SECTIONS.get(int(m.group(1)), "?")
            bad.append(f'{path}:{line}: {m.group(0)} -> {DOC}, "{heading}"')
    assert not bad, ("numbered sections of the old external spec are cited; "
                     "replace them as shown:\n  " + "\n  ".join(bad))


def test_the_checks_catch_an_outside_reference():
    for text in ["see ../" + "shared/x", "the SPEC" + ".md file"]:
        assert any(p.search(text) for p in _OUTSIDE), text
    assert _FORMER_CITATION.search("(SPEC" + " §9)")
