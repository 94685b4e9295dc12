"""Faults: a broken bundle stops start-up with one line and a non-zero exit; readiness is false until ready and
again once stopping; SIGTERM lets in-flight requests finish, then the process exits 0.

Each broken bundle is a copy of the served one with one thing wrong. The faults named in the issue run as the
real ``gshap serve --model <copy>`` process (concurrently, to stay fast); every fault, those included, also runs
through the same command in-process (``service.cli.main``), which checks the exact line cheaply.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import torch
from helpers import record
from live_server import ROOT, clean_env, running_server
from safetensors.torch import load_file, save_file

from service.api.app import create_app
from service.cli import main as gshap
from service.config import Settings
from service.model.store import FORMAT_VERSION, Bundle, _write_checksums

START_TIMEOUT = 90.0
SERVE = (sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", "0")
STOP_TIMEOUT = 60.0


# ---- broken copies of the bundle ----------------------------------------------------------------------------


def _truncate(name: str) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        path = folder / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return breaker


def _edit_json(name: str, edit: Callable[[Any], Any]) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        path = folder / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))

    return breaker


def _write(name: str, text: str) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        (folder / name).write_text(text)

    return breaker


def _delete(name: str) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        (folder / name).unlink()

    return breaker


def _wrong_shape(folder: Path) -> None:
    state = load_file(str(folder / "weights.safetensors"))
    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    save_file(state, str(folder / "weights.safetensors"))


def _nan_weights(folder: Path) -> None:
    state = load_file(str(folder / "weights.safetensors"))
    key = next(k for k, v in state.items() if v.ndim == 2)
    state[key][0, 0] = float("nan")
    save_file(state, str(folder / "weights.safetensors"))


def _manifest(**changes: Any) -> Callable[[Any], Any]:
    def edit(manifest: Any) -> Any:
        out = {**manifest, **changes}
        return {k: v for k, v in out.items() if v is not None}

    return edit


@dataclass(frozen=True)
class Fault:
    """One way a bundle can be broken, and the words its one-line refusal must contain."""

    id: str
    breaker: Callable[[Path], None] | None  # None: the folder does not exist at all
    says: str
    rechecksum: bool = False  # the checksums are rewritten, so that the fault is past verification
    subprocess: bool = False  # also run as a real process


def _not_object(groups: Any) -> Any:
    return {**groups, "TP": {"count": "many", "features": []}}


FAULTS = [
    Fault("bundle-missing", None, "does not exist", subprocess=True),
    Fault("weights-missing", _delete("weights.safetensors"), "weights.safetensors is missing"),
    Fault("checksums-missing", _delete("SHA256SUMS"), "SHA256SUMS is missing"),
    Fault(
        "weights-truncated",
        _truncate("weights.safetensors"),
        "checksum mismatch for weights.safetensors",
    ),
    Fault(
        "weights-truncated-rechecksummed",
        _truncate("weights.safetensors"),
        "weights.safetensors cannot be read",
        rechecksum=True,
        subprocess=True,
    ),
    Fault("weights-wrong-shape", _wrong_shape, "weights.safetensors does not fit the network", rechecksum=True),
    Fault("weights-nan", _nan_weights, "weights.safetensors holds NaN or infinite values", rechecksum=True),
    Fault(
        "baselines-truncated",
        _truncate("baselines.safetensors"),
        "baselines.safetensors cannot be read",
        rechecksum=True,
    ),
    Fault(
        "checksum-mismatch",
        _edit_json("manifest.json", _manifest(threshold=0.01)),
        "checksum mismatch for manifest.json",
        subprocess=True,
    ),
    Fault(
        "format-version-unknown",
        _edit_json("manifest.json", _manifest(format_version=FORMAT_VERSION + 1)),
        f"format_version {FORMAT_VERSION + 1}; this service reads 1, 2 and {FORMAT_VERSION}",
        rechecksum=True,
        subprocess=True,
    ),
    Fault(
        "manifest-not-json",
        _write("manifest.json", '{"format_version": 1,'),
        "manifest.json is not valid JSON",
        rechecksum=True,
    ),
    Fault("manifest-not-object", _write("manifest.json", "[1]"), "manifest.json is not a JSON object", rechecksum=True),
    Fault(
        "manifest-without-threshold",
        _edit_json("manifest.json", _manifest(threshold=None)),
        "manifest.json has no threshold",
        rechecksum=True,
    ),
    Fault(
        "groups-not-json",
        _write("groups.json", '{"TP": '),
        "groups.json cannot be read",
        rechecksum=True,
        subprocess=True,
    ),
    Fault(
        "groups-wrong-layout",
        _edit_json("groups.json", _not_object),
        "groups.json has no whole, non-negative TP.count",
        rechecksum=True,
    ),
]


def _broken_copy(bundle: Bundle, fault: Fault, base: Path) -> Path:
    folder = base / fault.id
    if fault.breaker is None:
        return folder
    shutil.copytree(bundle.path, folder)
    fault.breaker(folder)
    if fault.rechecksum:
        _write_checksums(folder)
    return folder


def _assert_one_line_refusal(fault: Fault, folder: Path, code: int | None, err: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"gshap: model bundle {folder}"), lines[0]
    assert fault.says in lines[0], lines[0]
    assert "Traceback" not in err


@dataclass(frozen=True)
class Refusal:
    folder: Path
    code: int | None
    err: str
    seconds: float


@pytest.fixture(scope="module")
def refusals(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Refusal]:
    """The subprocess faults, started together; each process's exit code, stderr and time to exit."""
    base = tmp_path_factory.mktemp("broken")
    started: dict[str, tuple[Path, subprocess.Popen[str], float]] = {}
    env = clean_env({"GSHAP_LOG_LEVEL": "info"})
    try:
        for fault in (f for f in FAULTS if f.subprocess):
            folder = _broken_copy(bundle, fault, base)
            proc = subprocess.Popen(
                [*SERVE, "--model", str(folder)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            started[fault.id] = (folder, proc, time.monotonic())
        out: dict[str, Refusal] = {}
        for fid, (folder, proc, t0) in started.items():
            _, err = proc.communicate(timeout=START_TIMEOUT)
            out[fid] = Refusal(folder, proc.returncode, err, time.monotonic() - t0)
        return out
    finally:
        for _, proc, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.subprocess], ids=lambda f: f.id)
def test_serve_refuses_a_broken_bundle(refusals: dict[str, Refusal], fault: Fault) -> None:
    """`gshap serve` on a broken bundle exits 2, in bounded time, with one stderr line naming the problem."""
    refusal = refusals[fault.id]
    _assert_one_line_refusal(fault, refusal.folder, refusal.code, refusal.err)
    assert refusal.seconds < START_TIMEOUT


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.id)
def test_every_broken_bundle_is_one_line(
    bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: Fault
) -> None:
    """The serve command's own code refuses each broken bundle with exit code 2 and one line naming the file."""
    folder = _broken_copy(bundle, fault, tmp_path)
    code = gshap(["serve", "--host", "127.0.0.1", "--port", "0", "--model", str(folder)])
    _assert_one_line_refusal(fault, folder, code, capsys.readouterr().err)


def test_the_served_bundle_passes_the_same_checks(bundle: Bundle) -> None:
    """The committed bundle loads with its group summaries (the checks above refuse only broken copies)."""
    assert bundle.groups is not None
    assert {"TP", "TN", "FP", "FN", "ALL"} <= set(bundle.groups)


# ---- readiness ----------------------------------------------------------------------------------------------


def test_readiness_is_false_until_warm_and_again_after_stop(bundle: Bundle) -> None:
    """/readyz is a 503 while the bundle loads and warms up, 200 once ready, 503 again after shutdown."""
    app = create_app(Settings(model_path=bundle.path))  # loads from disk in the lifespan, like a worker
    before: list[int] = []

    async def scenario() -> tuple[int, int, int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            started, stop = anyio.Event(), anyio.Event()

            async def lifespan() -> None:
                async with app.router.lifespan_context(app):
                    started.set()
                    await stop.wait()

            async with anyio.create_task_group() as tg:
                tg.start_soon(lifespan)
                with anyio.fail_after(START_TIMEOUT):
                    while not started.is_set():
                        r = await client.get("/readyz")
                        before.append(r.status_code)
                        if r.status_code == 503:
                            assert r.headers["retry-after"] == "1"
                            assert r.json()["type"].endswith("/model-not-ready")
                        await anyio.sleep(0.005)
                predict = (await client.post("/predict", json=record())).status_code
                ready = (await client.get("/readyz")).status_code
                stop.set()
            after = (await client.get("/readyz")).status_code
            after_predict = (await client.post("/predict", json=record())).status_code
            return ready, predict, after, after_predict

    ready, predict, after, after_predict = anyio.run(scenario)
    first_ready = before.index(200) if 200 in before else len(before)
    assert set(before[:first_ready]) == {503}  # the probes saw the loading phase, as 503s only
    assert set(before[first_ready:]) <= {200}  # once ready, never not ready while running
    assert (ready, predict) == (200, 200)
    assert (after, after_predict) == (503, 503)


# ---- graceful shutdown --------------------------------------------------------------------------------------

IN_FLIGHT = 20
RECORDS = [record(glucose=80.0 + i, age=30.0 + i % 40) for i in range(100)]
BATCH = {
    "records": RECORDS,
    "method": "quadrature",
    "n_samples": 32,
}


def test_sigterm_lets_in_flight_requests_finish_then_exits_0() -> None:
    """SIGTERM with 20 slow batches in flight: every one is answered 200 in full, then the process exits 0."""
    env = {"GSHAP_GRACEFUL_SHUTDOWN_SECONDS": "60", "GSHAP_LOG_LEVEL": "info"}
    with running_server(env) as server:
        proc = server.process
        done_at: list[float] = []

        async def one(client: httpx.AsyncClient) -> httpx.Response:
            r = await client.post("/explain/batch", json=BATCH)
            done_at.append(time.monotonic())
            return r

        async def scenario() -> tuple[list[httpx.Response], float]:
            limits = httpx.Limits(max_connections=IN_FLIGHT)
            async with httpx.AsyncClient(base_url=server.url, timeout=STOP_TIMEOUT, limits=limits) as client:
                async with anyio.create_task_group() as tg:
                    results: list[httpx.Response] = []

                    async def run() -> None:
                        results.append(await one(client))

                    for _ in range(IN_FLIGHT):
                        tg.start_soon(run)
                    await anyio.sleep(0.5)  # every request sent and read by the server
                    sigterm_at = time.monotonic()
                    os.kill(proc.pid, signal.SIGTERM)
                return results, sigterm_at

        results, sigterm_at = anyio.run(scenario)
        code = proc.wait(timeout=STOP_TIMEOUT)
        log = server.log.read_text()
    assert [r.status_code for r in results] == [200] * IN_FLIGHT
    assert all(r.json()["succeeded"] == len(RECORDS) for r in results)
    finished_after = sum(t > sigterm_at for t in done_at)
    print(f"sigterm: {finished_after} of {IN_FLIGHT} requests finished after SIGTERM; exit code {code}")
    assert finished_after >= IN_FLIGHT // 2, "the requests were not in flight when SIGTERM came"
    assert code == 0, log
    assert '"event":"stopped"' in log


def test_warm_up_refuses_a_model_with_non_finite_answers() -> None:
    """A model that answers NaN (weights that pass the load checks but break the arithmetic) is never ready."""
    from service.model.store import BundleError, load_bundle
    from service.runtime.inference import InferenceRuntime

    bundle = load_bundle()
    first = bundle.model[0]
    assert isinstance(first, torch.nn.Linear)
    with torch.no_grad():
        first.weight[0, 0] = float("nan")
    runtime = InferenceRuntime(bundle)
    try:
        with pytest.raises(BundleError, match="non-finite"):
            runtime.warm_up()
        assert runtime.ready is False
    finally:
        runtime.close()


# A NaN weight cannot come through the bundle's own checks (they refuse non-finite weights), so this process
# injects one into the model right after the real load, then runs the real `gshap serve` and its uvicorn.
_SERVE_WITH_A_NAN_WEIGHT = """
import sys
import torch
import service.runtime.registry as registry
loaded = registry.load_bundle
def with_a_nan_weight(path):
    bundle = loaded(path)
    with torch.no_grad():
        bundle.model[0].weight[0, 0] = float("nan")
    return bundle
registry.load_bundle = with_a_nan_weight
from service.cli import main
sys.exit(main(["serve", "--host", "127.0.0.1", "--port", "0"]))
"""


def test_serve_refuses_a_model_that_fails_its_warm_up_with_one_line() -> None:
    """`gshap serve` on a model whose warm-up answers are not finite exits 2 with one line, before uvicorn."""
    proc = subprocess.run(
        [sys.executable, "-c", _SERVE_WITH_A_NAN_WEIGHT],
        cwd=ROOT,
        env=clean_env({"GSHAP_LOG_LEVEL": "info"}),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gshap: model bundle "), lines[0]
    assert "the warm-up gave a non-finite prediction or attribution" in lines[0]
    assert "Traceback" not in proc.stderr
    assert "uvicorn" not in proc.stderr  # refused before the server started
