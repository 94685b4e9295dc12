"""`gshap serve` as a real process: serves on the default bundle, refuses a bad one, exits 0 on SIGTERM."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import app_client, free_port, record

import service.api.app as app_module
from service.cli import main
from service.config import Settings
from service.model.store import Bundle

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def _gshap(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    # `python -m service.cli` is the `gshap` script's own entry point, independent of how the venv was installed
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args],
        cwd=root,
        env={**os.environ, "GSHAP_LOG_LEVEL": "info", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)


def _wait_ready(proc: subprocess.Popen[str], base: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate(timeout=STOP_TIMEOUT)
            pytest.fail(f"server exited with {proc.returncode} before it was ready: {err[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"server not ready within {START_TIMEOUT} s")


def _refusal(root: Path, model: str | Path) -> tuple[int | None, str, list[str]]:
    """Start `gshap serve --model MODEL`, wait for it to exit: (exit code, stderr, stderr's lines)."""
    proc = _gshap(root, "serve", "--port", str(free_port()), "--model", str(model))
    try:
        _, err = proc.communicate(timeout=START_TIMEOUT)
    finally:
        _stop(proc)
    return proc.returncode, err, err.strip().splitlines()


@pytest.fixture
def server(root: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    proc = _gshap(root, "serve", "--host", "127.0.0.1", "--port", str(port))
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(proc, base)
        yield proc, base
    finally:
        _stop(proc)


@pytest.mark.slow
def test_serve_answers_explain_over_http_and_stops_on_sigterm(server: tuple[subprocess.Popen[str], str]) -> None:
    """The real server explains a record over TCP, with its headers, and exits 0 on SIGTERM with JSON logs."""
    proc, base = server
    r = httpx.post(f"{base}/explain", json=record(glucose=147.123), timeout=30.0)
    assert r.status_code == 200, r.text
    ex = r.json()
    assert [a["feature"] for a in ex["attributions"]][:2] == ["pregnancies", "glucose"]
    assert ex["prediction"]["model_version"] == r.headers["x-model-version"] == "pima-diabetes/1.1.0"
    assert r.headers["x-request-id"]
    assert "server" not in r.headers
    bad = httpx.post(f"{base}/predict", json={**record(), "glucos": 1}, timeout=30.0)
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=STOP_TIMEOUT) == 0
    _, err = proc.communicate(timeout=STOP_TIMEOUT)
    assert '"route":"/explain"' in err
    assert "147.123" not in err  # no patient value in the logs


@pytest.mark.slow
def test_serve_refuses_a_missing_bundle_with_one_line(root: Path) -> None:
    """`gshap serve --model /nonexistent` exits non-zero at once with a one-line reason on stderr."""
    code, err, lines = _refusal(root, "/nonexistent")
    assert code != 0
    assert len(lines) == 1, err
    assert "/nonexistent" in lines[0]
    assert "Traceback" not in err


@pytest.mark.slow
def test_serve_refuses_a_tampered_bundle(root: Path, bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A bundle whose weights changed after checksumming stops start-up with a one-line reason naming the file."""
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    weights = copy / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    code, _, lines = _refusal(root, copy)
    assert code != 0
    [line] = lines
    assert "weights.safetensors" in line


@pytest.mark.slow
def test_serve_refuses_a_bundle_whose_features_do_not_fit_its_weights(root: Path, bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A verified bundle whose feature list does not fit its network (one feature fewer than its first layer takes)
    stops start-up with a one-line reason naming the file and the key of its spec. (The request schema is the
    bundle's own, so a bundle's feature names are never "incompatible" with the service: tests/api/test_api.py serves a
    renamed one.)"""
    import json
    import shutil

    from service.model.store import _write_checksums

    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["features"]["features"][1]
    del manifest["spec"]["features"][1]  # the bundle's own spec (format 3), and its FHIR mapping of that feature
    del manifest["spec"]["fhir"]["glucose"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    _write_checksums(copy)
    code, _, lines = _refusal(root, copy)
    assert code == 2
    [line] = lines
    assert "manifest.json" in line
    assert "network[0].linear: takes 8 inputs but follows 7 features" in line


@pytest.mark.slow
def test_serve_refuses_a_missing_or_plain_http_jwks_with_one_line_and_exit_2(root: Path, tmp_path: Path) -> None:
    """GSHAP_CDS_JWT_ISSUERS naming a JWKS file that does not exist, or a plain http:// URL: `gshap serve` exits 2
    before loading anything, with one line on stderr that names the source (not a 401 for every call later)."""
    for source in (str(tmp_path / "no-such-jwks.json"), "http://127.0.0.1:9/jwks.json"):
        env = {"GSHAP_CDS_JWT_ISSUERS": f"https://ehr.example.org={source}"}
        proc = _gshap(root, "serve", "--port", str(free_port()), env=env)
        try:
            _, err = proc.communicate(timeout=START_TIMEOUT)
        finally:
            _stop(proc)
        lines = err.strip().splitlines()
        assert proc.returncode == 2, err
        assert len(lines) == 1, err
        assert source in lines[0]
        assert "Traceback" not in err


def test_the_collector_is_off_while_serve_starts_and_on_once_ready(
    monkeypatch: pytest.MonkeyPatch, bundle: Bundle
) -> None:
    """`gshap serve` turns the cyclic GC off before it imports the app, and the app's lifespan turns it back on once it
    has collected and frozen what start-up made (one full collection at start instead of three)."""
    seen: list[bool] = []

    def serve(settings: Settings) -> int:
        seen.append(gc.isenabled())
        return 0

    monkeypatch.setattr(app_module, "serve", serve)
    try:
        assert main(["serve", "--port", str(free_port())]) == 0
        assert seen == [False]
        with app_client(app_module.create_app(Settings(), bundle)):
            assert gc.isenabled()
    finally:
        gc.enable()
