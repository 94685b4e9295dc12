"""The README tells the truth and guides: its generated blocks and those of the docs are current, its two commands
are the ones CI runs, it stays a short guide that points to every document, the layout (docs/DEVELOPMENT.md) names
the real files, and the paths it and the docs mention exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A file name in the layout tree: a token with one of these extensions, not part of a longer path.
FILE_TOKEN = re.compile(r"(?<![\w/.-])[\w-]+\.(?:py|pyi|c|sh|md|yaml|toml|txt|json|csv)\b")
DIR_TOKEN = re.compile(r"(?<![\w/.-])[\w-]+/(?=[\s,)]|$)")
DESCRIPTION_COLUMN = 24  # the tree's descriptions start here; a line indented this far continues the one above


def _readme_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_script", ROOT / "scripts" / "readme.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# The live answers quote floats at full precision. Those of the exact estimator come from our C kernel (the same
# bits on every machine), but the sampled and quadrature examples go through torch's BLAS products, and the
# probabilities through libm's exp, whose last bits may differ between CPUs and builds. So a float may differ from
# the committed one by 1e-12 (relative, absolute below 1): a real change of an answer moves it by far more.
# Everything else, the integers and every character of text, must be identical; a Content-Length header follows
# its body's float spellings and is not compared.
FLOAT = re.compile(r"-?\d+\.\d+(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")
CONTENT_LENGTH = re.compile(r"(?im)^(content-length: )\d+$")
FLOAT_TOLERANCE = 1e-12


def same_up_to_float_bits(old: str, new: str) -> bool:
    """``new`` is ``old`` but for floats within FLOAT_TOLERANCE and Content-Length values."""
    old, new = (CONTENT_LENGTH.sub(r"\1<n>", t) for t in (old, new))
    if FLOAT.split(old) != FLOAT.split(new):
        return False
    a, b = FLOAT.findall(old), FLOAT.findall(new)
    return len(a) == len(b) and all(
        abs(float(x) - float(y)) <= FLOAT_TOLERANCE * max(1.0, abs(float(x))) for x, y in zip(a, b, strict=True)
    )


def test_float_bits_comparison_tolerates_bits_only() -> None:
    """The comparison accepts last-bit float changes and a Content-Length, and refuses any other change."""
    old = 'content-length: 120\n{"logit": 0.6431226544213765, "n": 3, "note": "ok", "e": 1.5e-05}'
    assert same_up_to_float_bits(old, old.replace("0.6431226544213765", "0.6431226544213766"))
    assert same_up_to_float_bits(old, old.replace("120", "121"))
    assert not same_up_to_float_bits(old, old.replace("0.6431226544213765", "0.6431226544"))
    assert not same_up_to_float_bits(old, old.replace('"n": 3', '"n": 4'))
    assert not same_up_to_float_bits(old, old.replace("ok", "ko"))
    assert not same_up_to_float_bits(old, old.replace("1.5e-05", "1.5e-04"))


def test_generated_blocks_are_current() -> None:
    """The README's examples and the docs' generated blocks (the model card, metrics, calibration, subgroups,
    settings, performance, the curl examples) equal what the code, the bundle and a live server give now (floats
    from BLAS or libm to their last bits)."""
    rendered = _readme_script().render_all()
    stale = [path.name for path, (old, new) in rendered.items() if not same_up_to_float_bits(old, new)]
    assert stale == [], f"{stale} stale: run python scripts/readme.py"


def test_two_commands_and_ci() -> None:
    """The README's first code block is `make serve` and `make test`, and .ci/run runs `make test`."""
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```sh\n(.*?)```", text, re.S)
    assert first is not None
    commands = [ln.split("#")[0].strip() for ln in first.group(1).splitlines() if ln.strip()]
    assert commands == ["make serve", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci


def layout_paths(tree: str) -> set[str]:
    """Every path the layout tree names, relative to the repository (folders end with '/').

    Each line names an entry at depth indent/2: a folder (``api/``), whose further names on the line are inside
    it, or a file, whose further names on the line are its siblings. A line indented to the description column
    continues the line above.
    """
    named: set[str] = set()
    stack: list[str] = []
    here = ""
    for line in tree.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        rest = line.strip()
        if indent < DESCRIPTION_COLUMN:
            first, _, rest = rest.partition(" ")
            stack = stack[: indent // 2]
            if first.endswith("/"):
                stack.append(first)
                here = "".join(stack)
                named.add(here)
            else:
                here = "".join(stack)
                named.add(here + first)
        named.update(here + name for name in FILE_TOKEN.findall(rest))
        named.update(here + name for name in DIR_TOKEN.findall(rest))
    return named


def _layout_tree() -> str:
    text = (ROOT / "docs" / "DEVELOPMENT.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    tree = re.search(r"```\n(.*?)```", section, re.S)
    assert tree is not None, "the Layout section has no tree"
    return tree.group(1)


def test_layout_names_every_module_and_nothing_else() -> None:
    """The layout tree (docs/DEVELOPMENT.md) names every module of service/ and every script, and each path it names
    exists."""
    named = layout_paths(_layout_tree())
    missing_on_disk = sorted(p for p in named if not (ROOT / p).exists())
    assert missing_on_disk == [], f"the layout names paths that do not exist: {missing_on_disk}"
    modules = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "service").rglob("*")
        if p.suffix in {".py", ".pyi", ".c"} and "__pycache__" not in p.parts
    }
    modules -= {m for m in modules if m.endswith("/__init__.py") and m != "service/__init__.py"}
    scripts = {p.relative_to(ROOT).as_posix() for p in (ROOT / "scripts").iterdir() if p.is_file()}
    not_named = sorted((modules | scripts) - named)
    assert not_named == [], f"the layout in docs/DEVELOPMENT.md does not name: {not_named}"


def test_layout_parser_reads_folders_files_and_continuations() -> None:
    """The tree parser puts names in the right folders: nested folders, several names a line, continued lines."""
    tree = (
        "a/                      top\n"
        "  b.py c.pyi            two files\n"
        "  d/                    x.py y.py inside d\n"
        "    e.c                 deeper\n"
        "  f.py                  back up\n"
        "                        g.sh continues the line above\n"
        "h.md                    at the root\n"
    )
    assert layout_paths(tree) == {
        "a/", "a/b.py", "a/c.pyi", "a/d/", "a/d/x.py", "a/d/y.py", "a/d/e.c", "a/f.py", "a/g.sh", "h.md",
    }  # fmt: skip


def _unreleased_changelog() -> str:
    """The CHANGELOG's entries not yet released (released ones keep the paths of their time), without the first
    column of its tables (the "before" of what moved where)."""
    text = (ROOT / "CHANGELOG.md").read_text().split("\n## [0.1.0]", 1)[0]
    return "\n".join("|" + ln.split("|", 2)[2] if ln.startswith("|") else ln for ln in text.splitlines())


def test_paths_in_the_readme_and_docs_exist() -> None:
    """Every repository path the README, docs/*.md and the unreleased CHANGELOG mention (service/…, scripts/…,
    tests/…, docs/…, also as ../ links from docs/) exists."""
    path = re.compile(r"(?<![\w/.-])((?:\.\./)?(?:service|scripts|tests|docs|docker|data|model_store)/[\w./-]*[\w/])")
    texts = {doc: doc.read_text() for doc in DOCS} | {ROOT / "CHANGELOG.md": _unreleased_changelog()}
    stale = []
    for doc, text in texts.items():
        for n, line in enumerate(text.splitlines(), 1):
            for p in path.findall(line):
                where = doc.parent if p.startswith("../") else ROOT
                if not (where / p).exists():
                    stale.append(f"{doc.relative_to(ROOT)}:{n}: {p}")
    assert stale == [], "stale paths:\n" + "\n".join(stale)


README_MAX_LINES = 300


def test_readme_is_a_short_guide_that_points_to_every_document() -> None:
    """The README stays a guide (at most 300 lines), has the sections the issue asks for, and links every document
    of docs/ (so that nothing there is out of reach)."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    for heading in ("## Two commands", "## Bring your own model in three steps", "## One example per endpoint family",
                    "## What an explanation means", "## Where everything else lives"):  # fmt: skip
        assert f"\n{heading}\n" in text, heading
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", text))
    documents = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert documents - linked == set(), f"the README does not link {sorted(documents - linked)}"


def test_no_document_says_the_served_probabilities_are_uncalibrated() -> None:
    """The default bundle serves Platt-calibrated probabilities; no README or docs sentence says they are not
    calibrated (the contradiction the README once had)."""
    from service.model.store import load_bundle

    assert load_bundle().calibration.name != "none"
    for doc in DOCS:
        text = re.sub(r"\s+", " ", doc.read_text().lower())
        assert "not calibrated prevalences" not in text, doc.name
        assert "probabilities are not calibrated" not in text, doc.name
