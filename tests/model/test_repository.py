"""The model repository: signed bundles, the store's layout and choices, several models served by one real server,
and reloads without a restart (real SIGHUP to a real process, POST /admin/reload), over real HTTP."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import record
from live_server import LiveServer, clean_env, free_port, running_server

from service.model.repository import StoreError, parse_choice, plan_single, plan_store, version_key
from service.model.signing import (
    SIGNATURE_FILE,
    SigningKeyError,
    TrustedKeys,
    check_signature,
    key_id,
    load_private_key,
    read_signature,
    sign_bundle,
)
from service.model.store import CHECKSUMS, BundleError, _write_checksums, load_bundle

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "model_store"
OLD_ANSWERS = ROOT / "tests" / "data" / "pima_1_0_0_answers.json"


# ---- helpers ----------------------------------------------------------------------------------------------


def make_store(tmp_path: Path, versions: tuple[str, ...] = ("1.0.0", "1.1.0"), default: str = "1.1.0") -> Path:
    """A copy of the shipped Pima versions in a store of its own."""
    store = tmp_path / "store"
    for v in versions:
        shutil.copytree(STORE / "pima-diabetes" / v, store / "pima-diabetes" / v)
    (store / "pima-diabetes" / "DEFAULT").write_text(default + "\n")
    (store / "DEFAULT").write_text("pima-diabetes\n")
    return store


def add_version(store: Path, version: str, source: str = "1.1.0", name: str = "pima-diabetes") -> Path:
    """A new version folder: ``source``'s files with the manifest's name and version changed, checksums rewritten."""
    folder = store / name / version
    shutil.copytree(STORE / "pima-diabetes" / source, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["name"], manifest["version"] = name, version
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _write_checksums(folder)
    return folder


def write_key(path: Path) -> tuple[Ed25519PrivateKey, Path]:
    """A fresh Ed25519 key (PEM) and its public key file (PEM)."""
    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key, pub


def wait_for(predicate: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def served(url: str) -> dict[str, Any]:
    listing: dict[str, Any] = httpx.get(f"{url}/models", timeout=10).json()
    return listing


def versions_of(url: str, name: str = "pima-diabetes") -> list[str]:
    for m in served(url)["models"]:
        if m["name"] == name:
            return [v["version"] for v in m["versions"]]
    return []


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return make_store(tmp_path)


# ---- signing ----------------------------------------------------------------------------------------------


def test_signed_bundle_verifies_and_names_its_key(tmp_path: Path) -> None:
    """A bundle signed with a key verifies, names that key's id, and is accepted when that key is trusted."""
    folder = make_store(tmp_path, ("1.1.0",)) / "pima-diabetes" / "1.1.0"
    key, pub = write_key(tmp_path / "k")
    signature = sign_bundle(folder, key)
    assert signature.key == key_id(key.public_key())
    assert signature.key.startswith("ed25519:")
    assert len(signature.key) == len("ed25519:") + 16
    assert read_signature(folder) == signature
    assert check_signature(folder, TrustedKeys.parse([str(pub)])) == signature
    load_bundle(folder)  # SIGNATURE is not in SHA256SUMS: the bundle still verifies


def test_rewritten_sums_do_not_match_the_signature(tmp_path: Path) -> None:
    """Someone who changes a file and rewrites SHA256SUMS to match cannot keep the signature valid."""
    folder = make_store(tmp_path, ("1.1.0",)) / "pima-diabetes" / "1.1.0"
    key, _ = write_key(tmp_path / "k")
    sign_bundle(folder, key)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["threshold"] = 0.01
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _write_checksums(folder)  # the checksums agree again...
    load_bundle(folder)
    with pytest.raises(BundleError, match=r"SIGNATURE does not match SHA256SUMS"):
        read_signature(folder)  # ...the signature does not, whatever keys are trusted


def test_unsigned_and_foreign_signed_bundles_are_refused_when_keys_are_trusted(tmp_path: Path) -> None:
    """With trusted keys: an unsigned bundle and one signed by another key are refused, each in one line naming
    the bundle and why; without trusted keys both load."""
    store = make_store(tmp_path)
    _, pub = write_key(tmp_path / "ours")
    theirs, _ = write_key(tmp_path / "theirs")
    unsigned, foreign = store / "pima-diabetes" / "1.0.0", store / "pima-diabetes" / "1.1.0"
    sign_bundle(foreign, theirs)
    trusted = TrustedKeys.parse([str(pub)])
    with pytest.raises(BundleError) as exc:
        check_signature(unsigned, trusted)
    assert str(unsigned) in str(exc.value)
    assert "unsigned" in str(exc.value)
    assert "\n" not in str(exc.value)
    with pytest.raises(BundleError) as exc:
        check_signature(foreign, trusted)
    assert f"signed by {key_id(theirs.public_key())}" in str(exc.value)
    assert str(foreign) in str(exc.value)
    assert check_signature(unsigned, None) is None
    assert check_signature(foreign, TrustedKeys.parse([])) is not None


def test_trusted_keys_are_read_in_every_documented_form(tmp_path: Path) -> None:
    """GSHAP_TRUSTED_KEYS entries: a PEM file, an OpenSSH public key inline, and base64 of the raw key; a
    private key file, an RSA key or garbage is refused with a reason."""
    key, pub = write_key(tmp_path / "k")
    public = key.public_key()
    ssh = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    import base64

    raw = base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    for entry in (str(pub), ssh, raw):
        assert TrustedKeys.parse([entry]).ids() == [key_id(public)]
    for bad in ("not-a-key", str(tmp_path / "k"), base64.b64encode(b"short").decode()):
        with pytest.raises(SigningKeyError, match="GSHAP_TRUSTED_KEYS"):
            TrustedKeys.parse([bad])
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM"):
        load_private_key(pub)


def test_gshap_sign_and_keygen_commands(tmp_path: Path) -> None:
    """`gshap keygen --out K` makes a key pair (private 0600); `gshap sign BUNDLE --key K` signs a bundle that
    verifies, and refuses a bundle that does not verify (exit 2, one line)."""
    folder = make_store(tmp_path, ("1.1.0",)) / "pima-diabetes" / "1.1.0"
    env = clean_env()
    gshap = [sys.executable, "-m", "service.cli"]
    out = subprocess.run(
        [*gshap, "keygen", "--out", str(tmp_path / "op")], env=env, cwd=ROOT, capture_output=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "op").stat().st_mode & 0o777 == 0o600
    signed = subprocess.run(
        [*gshap, "sign", str(folder), "--key", str(tmp_path / "op")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert signed.returncode == 0, signed.stderr
    pub = (tmp_path / "op.pub").read_text()
    assert check_signature(folder, TrustedKeys.parse([pub])) is not None
    (folder / "weights.safetensors").write_bytes(b"broken")
    refused = subprocess.run(
        [*gshap, "sign", str(folder), "--key", str(tmp_path / "op")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "checksum mismatch" in refused.stderr


# ---- the store --------------------------------------------------------------------------------------------


def test_store_plan_follows_defaults_and_choices(tmp_path: Path) -> None:
    """Every version of every model by default, each model's DEFAULT its default version; NAME@VERSION picks one
    version (the newest chosen is the default when DEFAULT is not chosen); the older name/version store DEFAULT is
    still read; a choice the store cannot meet is refused naming it."""
    store = make_store(tmp_path)
    add_version(store, "1.10.0")
    plan = plan_store(store)
    assert list(plan.models["pima-diabetes"].versions) == ["1.0.0", "1.1.0", "1.10.0"]  # 1.10 after 1.1
    assert plan.models["pima-diabetes"].default_version == "1.1.0"
    assert plan.default_model == "pima-diabetes"
    only = plan_store(store, ["pima-diabetes@1.0.0", "pima-diabetes@1.10.0"])
    assert list(only.models["pima-diabetes"].versions) == ["1.0.0", "1.10.0"]
    assert only.models["pima-diabetes"].default_version == "1.10.0"
    (store / "pima-diabetes" / "DEFAULT").unlink()
    (store / "DEFAULT").write_text("pima-diabetes/1.0.0\n")
    assert plan_store(store).models["pima-diabetes"].default_version == "1.0.0"
    for bad in ("pima-diabetes@9.9.9", "no-such-model", "Bad Name"):
        with pytest.raises(StoreError, match="model choice"):
            plan_store(store, [bad])
    assert parse_choice("a-b@1.2.3") == ("a-b", "1.2.3")
    assert parse_choice("a") == ("a", None)
    assert version_key("2.0.0") > version_key("1.10.0") > version_key("1.9.0")
    single = plan_single(store / "pima-diabetes" / "1.0.0")
    assert single.bundles() == [("pima-diabetes", "1.0.0", store / "pima-diabetes" / "1.0.0")]


# ---- one server, several models ---------------------------------------------------------------------------


def test_one_server_serves_both_pima_versions(store: Path) -> None:
    """GET /models lists both versions, the default marked; /models/{name}/versions/{v}/... answers with that
    version and says so (answer and X-Model-Version); /models/{name}/... and the root routes answer with the
    default; an unknown model or version is a 404 problem (GET /models/{name}: naming what is served), and adds no
    metric series."""
    with running_server({"GSHAP_MODEL_STORE": str(store)}) as server, httpx.Client(base_url=server.url) as c:
        listing = c.get("/models").json()
        assert listing["default_model"] == "pima-diabetes"
        [model] = listing["models"]
        assert model["default_version"] == "1.1.0"
        assert model["ready"] is True
        assert [(v["version"], v["default"], v["signed_by"]) for v in model["versions"]] == [
            ("1.0.0", False, None),
            ("1.1.0", True, None),
        ]
        assert model["methods"]
        assert "exact" in model["methods"]
        rec = record()
        old = c.post("/models/pima-diabetes/versions/1.0.0/predict", json=rec)
        new = c.post("/models/pima-diabetes/predict", json=rec)
        root = c.post("/predict", json=rec)
        assert old.status_code == new.status_code == root.status_code == 200
        assert old.json()["model_version"] == old.headers["X-Model-Version"] == "pima-diabetes/1.0.0"
        assert old.json()["calibration"] == "none"
        assert new.json()["model_version"] == root.headers["X-Model-Version"] == "pima-diabetes/1.1.0"
        assert new.json() == root.json()
        assert old.json()["probability"] != new.json()["probability"]
        ex = c.post("/models/pima-diabetes/versions/1.0.0/explain", json=rec).json()
        assert ex["prediction"]["model_version"] == "pima-diabetes/1.0.0"
        card = c.get("/models/pima-diabetes/versions/1.0.0/model").json()
        assert (card["version"], card["model_version"]) == ("1.0.0", "pima-diabetes/1.0.0")
        for path in ("/models/nope/predict", "/models/pima-diabetes/versions/9.9.9/predict"):
            r = c.post(path, json=rec)
            assert r.status_code == 404
            assert r.headers["content-type"] == "application/problem+json"
        nope = c.get("/models/nope")
        assert nope.status_code == 404
        assert nope.json()["served"] == ["pima-diabetes"]
        metrics = c.get("/metrics").text
        assert 'model="nope"' not in metrics
        assert 'version="9.9.9"' not in metrics
        assert 'gshap_model_ready{model="pima-diabetes",version="1.0.0"} 1.0' in metrics
        assert c.get("/models/pima-diabetes/versions/1.0.0/monitoring").json()["model_version"].endswith("1.0.0")
        assert c.post("/admin/reload").status_code == 404  # no admin key, no admin route


def test_restored_1_0_0_answers_as_it_did(store: Path) -> None:
    """pima-diabetes/1.0.0, rebuilt by `gshap bundle` from its weights in the history (scripts/rebuild_pima_1_0_0.py),
    carries its spec and card and gives the probabilities, labels and exact attributions its old files gave with the
    code of their time (computed at f9d0ee4~1 and stored in tests/data), to rounding (1e-12)."""
    old = json.loads(OLD_ANSWERS.read_text())
    with running_server({"GSHAP_MODEL_STORE": str(store)}) as server, httpx.Client(base_url=server.url) as c:
        base = "/models/pima-diabetes/versions/1.0.0"
        preds = c.post(f"{base}/predict/batch", json={"records": old["records"]}).json()["results"]
        exps = c.post(f"{base}/explain/batch", json={"records": old["records"]}).json()["results"]
    assert len(preds) == len(old["records"]) == 40
    for i, (p, e) in enumerate(zip(preds, exps, strict=True)):
        assert p["ok"]
        assert math.isclose(p["probability"], old["probability"][i], rel_tol=0, abs_tol=1e-12)
        assert p["label"] == old["label"][i]
        # gshap bundle writes Youden's threshold rounded to 6 digits (the validation split's decisions unchanged)
        assert abs(p["threshold"] - old["threshold"]) < 1e-6
        got = [a["attribution"] for a in e["attributions"]]
        assert all(
            math.isclose(g, w, abs_tol=1e-12) for g, w in zip(got, old["exact_logit_attributions"][i], strict=True)
        )


# ---- reloads ----------------------------------------------------------------------------------------------


def test_sighup_adds_removes_and_follows_default(store: Path) -> None:
    """A real SIGHUP to a real server: a new version folder is served, a removed one unloaded, a changed DEFAULT
    followed by /models/{name}/... and the root routes, without a restart (same pid, no failed request)."""
    with running_server({"GSHAP_MODEL_STORE": str(store)}) as server, httpx.Client(base_url=server.url) as c:
        pid = server.pid
        add_version(store, "1.2.0")
        shutil.rmtree(store / "pima-diabetes" / "1.0.0")
        (store / "pima-diabetes" / "DEFAULT").write_text("1.2.0\n")
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: versions_of(server.url) == ["1.1.0", "1.2.0"], what="the reload")
        assert c.post("/predict", json=record()).headers["X-Model-Version"] == "pima-diabetes/1.2.0"
        assert c.post("/models/pima-diabetes/predict", json=record()).json()["model_version"] == "pima-diabetes/1.2.0"
        assert c.post("/models/pima-diabetes/versions/1.0.0/predict", json=record()).status_code == 404
        metrics = c.get("/metrics").text
        assert 'gshap_model_reloads_total{outcome="ok"} 1.0' in metrics
        assert 'gshap_model_ready{model="pima-diabetes",version="1.0.0"}' not in metrics  # unloaded: no series
        assert server.process.poll() is None
        assert server.pid == pid


def test_a_tampered_new_bundle_is_refused_and_the_old_one_stays(store: Path, tmp_path: Path) -> None:
    """At a reload, a tampered bundle (a changed file with rewritten checksums, so a signature that no longer
    matches) is refused with a log line and a metric and the version served before stays; with trusted keys an
    unsigned new version is refused too."""
    key, pub = write_key(tmp_path / "k")
    for v in ("1.0.0", "1.1.0"):
        sign_bundle(store / "pima-diabetes" / v, key)
    env = {"GSHAP_MODEL_STORE": str(store), "GSHAP_TRUSTED_KEYS": str(pub), "GSHAP_LOG_LEVEL": "info"}
    with running_server(env) as server, httpx.Client(base_url=server.url) as c:
        before = c.post("/models/pima-diabetes/versions/1.0.0/predict", json=record()).json()
        signer = key_id(key.public_key())
        assert {v["signed_by"] for v in c.get("/models").json()["models"][0]["versions"]} == {signer}
        assert c.get("/model").json()["signed_by"] == signer
        manifest = store / "pima-diabetes" / "1.0.0" / "manifest.json"
        manifest.write_text(manifest.read_text().replace('"threshold": ', '"threshold": 0.0001, "x": ', 1))
        _write_checksums(manifest.parent)  # whoever changed it rewrote the checksums: the signature says no
        add_version(store, "1.2.0")  # unsigned
        os.kill(server.pid, signal.SIGHUP)
        wait_for(lambda: "gshap_model_reloads_total{" in c.get("/metrics").text, what="the reload")
        metrics = c.get("/metrics").text
        assert 'gshap_model_reloads_total{outcome="partial"} 1.0' in metrics
        assert 'gshap_model_bundle_refusals_total{model="pima-diabetes",version="1.0.0"} 1.0' in metrics
        assert 'gshap_model_bundle_refusals_total{model="pima-diabetes",version="1.2.0"} 1.0' in metrics
        assert versions_of(server.url) == ["1.0.0", "1.1.0"]
        assert c.post("/models/pima-diabetes/versions/1.0.0/predict", json=record()).json() == before
        log = server.log.read_text()
    assert "SIGNATURE does not match SHA256SUMS" in log
    assert "unsigned" in log


def test_unsigned_bundle_is_refused_at_start_up_when_keys_are_trusted(store: Path, tmp_path: Path) -> None:
    """`gshap serve` with GSHAP_TRUSTED_KEYS and an unsigned bundle exits 2 with one line naming the bundle."""
    _, pub = write_key(tmp_path / "k")
    env = clean_env({"GSHAP_MODEL_STORE": str(store), "GSHAP_TRUSTED_KEYS": str(pub), "GSHAP_PORT": str(free_port())})
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "pima-diabetes/1.0.0" in proc.stderr
    assert "unsigned" in proc.stderr


def test_admin_reload_needs_an_admin_key(store: Path) -> None:
    """With GSHAP_ADMIN_KEYS, POST /admin/reload reloads for an admin key only (an API key does not open it) and
    reports what changed."""
    env = {"GSHAP_MODEL_STORE": str(store), "GSHAP_ADMIN_KEYS": "admin-secret", "GSHAP_API_KEYS": "api-key"}
    with running_server(env) as server, httpx.Client(base_url=server.url) as c:
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": "Bearer api-key"}).status_code == 401
        add_version(store, "1.2.0")
        r = c.post("/admin/reload", headers={"X-Admin-Key": "admin-secret"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["added"] == ["pima-diabetes@1.2.0"]
        assert body["outcome"] == "ok"
        assert sorted(body["kept"]) == ["pima-diabetes@1.0.0", "pima-diabetes@1.1.0"]
        assert body["workers"] == "this process"
        assert c.get("/models", headers={"X-API-Key": "api-key"}).json()["models"][0]["default_version"] == "1.1.0"


@pytest.mark.parametrize(
    "env",
    [{"GSHAP_WORKERS": "2"}, {"GSHAP_ENGINE_PROCESSES": "1"}],
    ids=["two-workers", "engine-process"],
)
def test_every_process_reloads(store: Path, env: dict[str, str]) -> None:
    """With two uvicorn workers (SIGHUP to the supervisor), or with an engine process, every process serves the
    new version after the reload and explanations of it are exact; the supervisor is not restarted."""
    with running_server({"GSHAP_MODEL_STORE": str(store), **env}) as server, httpx.Client(base_url=server.url) as c:
        add_version(store, "1.2.0")
        (store / "pima-diabetes" / "DEFAULT").write_text("1.2.0\n")
        os.kill(server.pid, signal.SIGHUP)

        def everyone() -> bool:  # several answers in a row, so that both workers are asked
            return all(c.get("/models").json()["models"][0]["default_version"] == "1.2.0" for _ in range(12))

        wait_for(everyone, what="every process to reload")
        ex = c.post("/models/pima-diabetes/versions/1.2.0/explain", json=record()).json()
        assert abs(ex["completeness_gap"]) < 1e-9
        assert ex["prediction"]["model_version"] == "pima-diabetes/1.2.0"
        assert server.process.poll() is None


def _load_during_reloads(server: LiveServer, seconds: float, reloads_every: float) -> tuple[int, int]:
    """Explain requests from 4 threads while SIGHUP reloads the server; (answered, failed)."""
    import threading

    stop = time.monotonic() + seconds
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while time.monotonic() < stop:
                try:
                    ok = c.post("/explain", json=record()).status_code == 200
                except httpx.TransportError:
                    ok = False
                with lock:
                    counts["ok" if ok else "failed"] += 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    while time.monotonic() < stop:
        os.kill(server.pid, signal.SIGHUP)
        time.sleep(reloads_every)
    for t in threads:
        t.join()
    return counts["ok"], counts["failed"]


def test_reloads_under_load_fail_no_request(store: Path) -> None:
    """Requests sent while the store is reloaded every 0.5 s (a version swapped in and out each time) all
    succeed: in-flight requests finish on the runtime they started on."""
    with running_server({"GSHAP_MODEL_STORE": str(store)}) as server:
        import threading

        flip = threading.Event()

        def churn() -> None:  # add and remove a version between reloads
            while not flip.is_set():
                folder = store / "pima-diabetes" / "1.2.0"
                if folder.exists():
                    shutil.rmtree(folder)
                else:
                    add_version(store, "1.2.0")
                (store / "pima-diabetes" / "DEFAULT").write_text("1.2.0\n" if folder.exists() else "1.1.0\n")
                time.sleep(0.5)

        t = threading.Thread(target=churn)
        t.start()
        try:
            ok, failed = _load_during_reloads(server, seconds=6.0, reloads_every=0.5)
        finally:
            flip.set()
            t.join()
        assert failed == 0
        assert ok > 0
        assert server.process.poll() is None


def test_model_path_still_serves_one_bundle_alone(store: Path) -> None:
    """GSHAP_MODEL_PATH serves that bundle alone and wins over the store's choice."""
    env = {"GSHAP_MODEL_PATH": str(store / "pima-diabetes" / "1.0.0"), "GSHAP_MODEL_STORE": str(store)}
    with running_server(env) as server:
        listing = served(server.url)
        assert [(m["name"], m["default_version"]) for m in listing["models"]] == [("pima-diabetes", "1.0.0")]
        assert len(listing["models"][0]["versions"]) == 1
        r = httpx.post(f"{server.url}/predict", json=record())
        assert r.json()["model_version"] == "pima-diabetes/1.0.0"


def test_serve_model_flag_is_repeatable(store: Path) -> None:
    """`gshap serve --model pima-diabetes@1.0.0 --model pima-diabetes@1.1.0` serves exactly those versions."""
    command = ("serve", "--host", "127.0.0.1", "--model", "pima-diabetes@1.0.0")
    with running_server({"GSHAP_MODEL_STORE": str(store)}, command=command) as server:
        assert versions_of(server.url) == ["1.0.0"]
    both = (*command, "--model", "pima-diabetes@1.1.0")
    with running_server({"GSHAP_MODEL_STORE": str(store)}, command=both) as server:
        assert versions_of(server.url) == ["1.0.0", "1.1.0"]


def test_checksums_file_is_what_the_signature_covers(tmp_path: Path) -> None:
    """SIGNATURE is never listed in SHA256SUMS (rewriting the checksums of a signed bundle leaves it out)."""
    folder = make_store(tmp_path, ("1.1.0",)) / "pima-diabetes" / "1.1.0"
    key, _ = write_key(tmp_path / "k")
    sign_bundle(folder, key)
    _write_checksums(folder)
    assert SIGNATURE_FILE not in (folder / CHECKSUMS).read_text()
    assert read_signature(folder) is not None  # same checksums as before, same signature


def test_typed_client_takes_a_model_and_version(store: Path) -> None:
    """GshapClient(url, model=..., version=...) asks that model's routes; without a model, the server's default;
    AsyncGshapClient likewise; a version without a model is refused before any request."""
    import asyncio

    from service.client import AsyncGshapClient, GshapClient

    with running_server({"GSHAP_MODEL_STORE": str(store)}) as server:
        with GshapClient(server.url, model="pima-diabetes", version="1.0.0") as old:
            assert old.predict(record()).model_version == "pima-diabetes/1.0.0"
            assert old.model().version == "1.0.0"
            assert old.ready().status == "ready"
        with GshapClient(server.url, model="pima-diabetes") as default, GshapClient(server.url) as root:
            assert default.predict(record()) == root.predict(record())
            assert default.explain(record()).prediction.model_version == "pima-diabetes/1.1.0"

        async def ask() -> str:
            async with AsyncGshapClient(server.url, model="pima-diabetes", version="1.0.0") as c:
                return (await c.predict(record())).model_version

        assert asyncio.run(ask()) == "pima-diabetes/1.0.0"
    with pytest.raises(ValueError, match="a version needs its model"):
        GshapClient("http://127.0.0.1:1", version="1.0.0")


def test_explain_cohort_takes_a_model_and_version(store: Path, tmp_path: Path) -> None:
    """`gshap explain-cohort IN OUT --model pima-diabetes@1.0.0` explains with that version of the store: its
    probabilities are the restored 1.0.0's (the stored answers of f9d0ee4~1), not the default 1.1.0's."""
    import csv

    import pyarrow.parquet as pq

    old = json.loads(OLD_ANSWERS.read_text())
    rows = old["records"][:8]
    source = tmp_path / "in.csv"
    with source.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    env = clean_env({"GSHAP_MODEL_STORE": str(store)})
    for choice, model_version in (("pima-diabetes@1.0.0", "pima-diabetes/1.0.0"), ("pima-diabetes", None)):
        out = tmp_path / f"{choice}.parquet"
        run = subprocess.run(
            [sys.executable, "-m", "service.cli", "explain-cohort", str(source), str(out), "--model", choice],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        probabilities = pq.read_table(out).column("probability").to_pylist()
        same = [math.isclose(p, w, abs_tol=1e-12) for p, w in zip(probabilities, old["probability"], strict=False)]
        assert all(same) if model_version else not any(same)
    command = [sys.executable, "-m", "service.cli", "explain-cohort", str(source), str(tmp_path / "x.parquet")]
    bad = subprocess.run(
        [*command, "--model", "pima-diabetes@9.9.9"], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert "no version '9.9.9'" in bad.stderr


def test_cds_discovery_lists_one_service_per_served_version(store: Path) -> None:
    """CDS discovery lists the default version's service under its bare id and the other version under
    diabetes-risk-1.0.0; calling each answers with its own model version (different risks for one patient)."""
    from fhir_helpers import cds_request, load, prefetch_for

    request = cds_request(prefetch_for(load("patient_bundle.json")))
    with running_server({"GSHAP_MODEL_STORE": str(store)}) as server, httpx.Client(base_url=server.url) as c:
        services = c.get("/cds-services").json()["services"]
        assert [s["id"] for s in services] == ["diabetes-risk", "diabetes-risk-1.0.0"]
        summaries, uuids = {}, {}
        for service in services:
            r = c.post(f"/cds-services/{service['id']}", json=request)
            assert r.status_code == 200, r.text
            summaries[service["id"]] = r.json()["cards"][0]["summary"]
            uuids[service["id"]] = r.json()["cards"][0]["uuid"]
            assert r.headers["X-Model-Version"] in summaries[service["id"]]
        assert "pima-diabetes/1.1.0" in summaries["diabetes-risk"]
        assert "pima-diabetes/1.0.0" in summaries["diabetes-risk-1.0.0"]
        # feedback is taken only for a card this service issued (docs/CDS_HOOKS.md): the 1.0.0 card's uuid
        outcome = {"outcome": "overridden", "outcomeTimestamp": "2026-12-02T00:00:00Z"}
        feedback = {"feedback": [{"card": uuids["diabetes-risk-1.0.0"], **outcome}]}
        assert c.post("/cds-services/diabetes-risk-1.0.0/feedback", json=feedback).status_code == 200
