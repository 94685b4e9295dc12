"""The model store as a repository of several models and versions, and what a server picks from it.

Layout (``GSHAP_MODEL_STORE``, default: the repository's ``model_store/``)::

    model_store/
      DEFAULT                  the default model: "pima-diabetes" (the older "pima-diabetes/1.1.0" is still read)
      pima-diabetes/
        DEFAULT                its default version: "1.1.0"
        1.0.0/  1.1.0/         bundles (service.model.store), each with SHA256SUMS (and SIGNATURE when signed)
      breast-cancer-wisconsin/
        DEFAULT
        1.0.0/

A model folder is a folder of the store holding a ``DEFAULT`` file or at least one bundle (a folder with
``SHA256SUMS``); anything else (``specs/``, a README) is ignored. A version folder is a bundle folder.

What is served (:func:`plan_store`): ``GSHAP_MODELS`` (or ``gshap serve --model``, repeatable) lists choices,
``NAME`` (every version of that model) or ``NAME@VERSION`` (that version); with no choice, every version of every
model. Each served model's default version is the one its ``DEFAULT`` names when it is served, else the newest
served one; the store's default model (what the root routes answer for) is the one the store's ``DEFAULT`` names
when it is served, else the first served model by name. ``GSHAP_MODEL_PATH`` serves one bundle alone
(:func:`plan_single`). The plan is made again at each reload, so new versions, removed ones and a changed
``DEFAULT`` are followed. No web framework here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service.model.store import CHECKSUMS, DEFAULT_STORE, BundleError, default_bundle_path

__all__ = [
    "NAME_PATTERN",
    "VERSION_PATTERN",
    "PlannedModel",
    "StoreError",
    "StorePlan",
    "parse_choice",
    "plan_single",
    "plan_store",
    "scan_store",
    "version_key",
]

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
VERSION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}"
_NAME = re.compile(NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)
_POINTER = "DEFAULT"


class StoreError(BundleError):
    """The store, or a choice of what to serve from it, cannot be used; one line naming the file or choice."""


@dataclass(frozen=True)
class PlannedModel:
    """One model to serve: its versions (bundle folders, oldest first) and its default version."""

    name: str
    versions: dict[str, Path]
    default_version: str


@dataclass(frozen=True)
class StorePlan:
    """What to serve: the models by name and the default model (the root routes answer for its default version)."""

    models: dict[str, PlannedModel]
    default_model: str
    root: Path | None

    def bundles(self) -> list[tuple[str, str, Path]]:
        """Every ``(name, version, folder)`` to serve, models by name, versions oldest first."""
        return [(m.name, v, p) for m in self.models.values() for v, p in m.versions.items()]


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of a version: dotted numbers compare as numbers (``1.10.0`` after ``1.9.0``), other parts as text."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.+-]", version))


def parse_choice(text: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME@VERSION`` -> ``(name, version or None)``; :class:`StoreError` if either is malformed."""
    name, sep, version = text.strip().partition("@")
    if not _NAME.fullmatch(name):
        raise StoreError(f"model choice {text!r}: the name must match {NAME_PATTERN} (write NAME or NAME@VERSION)")
    if sep and not _VERSION.fullmatch(version):
        raise StoreError(f"model choice {text!r}: the version must match {VERSION_PATTERN}")
    return name, (version if sep else None)


def _read_pointer(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


def scan_store(root: Path) -> dict[str, tuple[dict[str, Path], str | None]]:
    """The store's models: ``name -> (versions -> bundle folder, oldest first; the version its DEFAULT names)``."""
    if not root.is_dir():
        raise StoreError(f"model store {root} does not exist")
    found: dict[str, tuple[dict[str, Path], str | None]] = {}
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or not _NAME.fullmatch(folder.name):
            continue
        versions = {
            v.name: v
            for v in folder.iterdir()
            if v.is_dir() and (v / CHECKSUMS).is_file() and _VERSION.fullmatch(v.name)
        }
        pointer = _read_pointer(folder / _POINTER)
        if not versions and pointer is None:
            continue
        ordered = dict(sorted(versions.items(), key=lambda item: version_key(item[0])))
        found[folder.name] = (ordered, pointer)
    return found


def plan_store(root: Path | None = None, choices: Sequence[str] = ()) -> StorePlan:
    """What to serve from the store at ``root`` (default: the repository's ``model_store``) for ``choices``
    (``NAME`` or ``NAME@VERSION``; none: everything). :class:`StoreError` for a choice the store cannot meet."""
    root = root or DEFAULT_STORE
    found = scan_store(root)
    wanted: dict[str, set[str] | None] = {}  # None: every version
    for choice in choices:
        name, version = parse_choice(choice)
        if name not in found:
            known = ", ".join(found) or "none"
            raise StoreError(f"model choice {choice!r}: no model {name!r} in the store {root} (it holds: {known})")
        if version is not None and version not in found[name][0]:
            known = ", ".join(found[name][0]) or "none"
            raise StoreError(f"model choice {choice!r}: {name} has no version {version!r} in {root} ({known})")
        if version is None:
            wanted[name] = None
        elif name not in wanted or wanted[name] is not None:
            wanted.setdefault(name, set()).add(version)  # type: ignore[union-attr]
    if not choices:
        wanted = dict.fromkeys(found)
    store_pointer = _read_pointer(root / _POINTER)
    store_model, _, store_version = (store_pointer or "").partition("/")
    models: dict[str, PlannedModel] = {}
    for name, only in wanted.items():
        versions, pointer = found[name]
        served = {v: p for v, p in versions.items() if only is None or v in only}
        if not served:
            continue
        if pointer is None and name == store_model and store_version:
            pointer = store_version  # the older "name/version" form of the store's DEFAULT
        default = pointer if pointer in served else list(served)[-1]
        models[name] = PlannedModel(name=name, versions=served, default_version=default)
    if not models:
        raise StoreError(f"model store {root} holds no bundle to serve")
    default_model = store_model if store_model in models else sorted(models)[0]
    return StorePlan(models=dict(sorted(models.items())), default_model=default_model, root=root)


def plan_single(path: Path) -> StorePlan:
    """``GSHAP_MODEL_PATH``: the one bundle at ``path`` (a bundle folder, or a store or model folder whose
    ``DEFAULT`` leads to one), served alone under the name and version its manifest gives."""
    folder = path
    if (folder / _POINTER).is_file() and not (folder / CHECKSUMS).is_file():
        folder = default_bundle_path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        raise BundleError(f"model bundle {folder} does not exist or has no manifest.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # the words load_bundle uses for the same fault
        raise BundleError(f"model bundle {folder}: manifest.json is not valid JSON ({exc})") from None
    except OSError as exc:
        raise BundleError(f"model bundle {folder}: manifest.json cannot be read ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"model bundle {folder}: manifest.json is not a JSON object")
    try:
        name, version = str(manifest["name"]), str(manifest["version"])
    except KeyError as exc:
        raise BundleError(f"model bundle {folder}: manifest.json has no {exc.args[0]!r}") from None
    model = PlannedModel(name=name, versions={version: folder}, default_version=version)
    return StorePlan(models={name: model}, default_model=name, root=None)
