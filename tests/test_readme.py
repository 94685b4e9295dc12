"""The README tells the truth: its generated blocks are current and its two commands are the ones CI runs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _readme_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_script", ROOT / "scripts" / "readme.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_blocks_are_current() -> None:
    """Settings table, metrics table and curl examples equal what the code and a live server give now."""
    text = (ROOT / "README.md").read_text()
    assert _readme_script().render(text) == text, "README is stale: run python scripts/readme.py"


def test_two_commands_and_ci() -> None:
    """The README's first code block is `make serve` and `make test`, and .ci/run runs `make test`."""
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```sh\n(.*?)```", text, re.S)
    assert first is not None
    commands = [ln.split("#")[0].strip() for ln in first.group(1).splitlines() if ln.strip()]
    assert commands == ["make serve", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci
