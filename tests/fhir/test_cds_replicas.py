"""Two ``gshap serve`` processes sharing a real PostgreSQL (tests/postgres.py): the jti replay cache and the
feedback are shared; acknowledged feedback survives SIGKILL; the database going down gives 503 problems (never a
500, never an acknowledgement for a write that did not happen), fails closed with JWTs, keeps serving cards in open
mode; the service reconnects by itself; no patient value reaches the database."""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fhir_helpers import cds_request, load, prefetch_for, resources
from live_server import LiveServer, running_server
from postgres import PostgresServer, running_postgres

SERVICE = "/cds-services/diabetes-risk"
ISS = "https://ehr.example.org"
BASE = "https://cds.example.org"
TIMESTAMP = "2026-11-29T10:05:31Z"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """An ES384 key and the JWKS file that publishes it."""
    key = ec.generate_private_key(ec.SECP384R1())
    public = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks = tmp_path_factory.mktemp("jwks") / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "k-1", "alg": "ES384", "use": "sig"}]}))
    return key, jwks


def token(key: Any, path: str = SERVICE) -> str:
    now = int(time.time())
    claims = {"iss": ISS, "aud": f"{BASE}{path}", "exp": now + 120, "iat": now, "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm="ES384", headers={"kid": "k-1", "typ": "JWT"})


def jwt_env(url: str, jwks: Path) -> dict[str, str]:
    return {"GSHAP_DATABASE_URL": url, "GSHAP_CDS_JWT_ISSUERS": f"{ISS}={jwks}", "GSHAP_CDS_BASE_URL": BASE}


PREFETCH = prefetch_for(load("patient_bundle.json"))


def get_card(server: LiveServer, tok: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    return httpx.post(f"{server.url}{SERVICE}", json=cds_request(PREFETCH), headers=headers, timeout=30)


def send_feedback(server: LiveServer, card: str, tok: str | None = None, n: int = 1, **extra: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    items = [{"card": card, "outcome": "overridden", "outcomeTimestamp": TIMESTAMP, **extra}] * n
    return httpx.post(f"{server.url}{SERVICE}/feedback", json={"feedback": items}, headers=headers, timeout=30)


def db_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


@pytest.fixture(scope="module")
def replicas(
    postgres: PostgresServer, signing: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, LiveServer, LiveServer]]:
    """Two replicas with JWTs on, sharing one new database of the session's PostgreSQL."""
    name = f"r_{uuid.uuid4().hex[:10]}"
    postgres.psql(f"CREATE DATABASE {name}")
    url = f"postgresql://gshap@127.0.0.1:{postgres.port}/{name}"
    env = jwt_env(url, signing[1])
    with running_server(env) as a, running_server(env) as b:
        yield url, a, b


def test_a_jti_used_on_one_replica_is_refused_on_the_other(
    replicas: tuple[str, LiveServer, LiveServer], signing: tuple[Any, Path]
) -> None:
    """A token accepted by replica A is a replay on replica B (401), and the other way round."""
    _, a, b = replicas
    key = signing[0]
    first, second = token(key), token(key)
    assert get_card(a, first).status_code == 200
    assert get_card(b, first).status_code == 401
    assert get_card(b, second).status_code == 200
    assert get_card(a, second).status_code == 401


def test_acknowledged_feedback_survives_sigkill_of_the_replica(
    replicas: tuple[str, LiveServer, LiveServer], signing: tuple[Any, Path]
) -> None:
    """A card issued by replica A takes feedback on replica C; C is killed with SIGKILL right after the
    acknowledgement, and the row is in the database (read by another client) and in A's summary."""
    url, a, _ = replicas
    key = signing[0]
    card = get_card(a, token(key)).json()["cards"][0]
    with running_server(jwt_env(url, signing[1])) as c:
        r = send_feedback(c, card["uuid"], token(key, f"{SERVICE}/feedback"), overrideReason={
            "reason": card["overrideReasons"][1]})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json() == {"stored": 1}
        c.process.send_signal(signal.SIGKILL)
        c.process.wait(10)
        assert c.process.returncode == -signal.SIGKILL
    rows = db_rows(url, f"SELECT outcome, override_code FROM cds_feedback WHERE card_uuid = '{card['uuid']}'")
    assert rows == [("overridden", card["overrideReasons"][1]["code"])]


def test_the_summary_counts_without_patient_data(
    replicas: tuple[str, LiveServer, LiveServer], signing: tuple[Any, Path]
) -> None:
    """GET /cds-services/{id}/feedback/summary: closed without a key configured (401); with an admin key, counts
    per outcome and reason, per model version and week, equal to the rows; no card uuid in it."""
    url, a, _ = replicas
    key = signing[0]
    card = get_card(a, token(key)).json()["cards"][0]
    assert send_feedback(a, card["uuid"], token(key, f"{SERVICE}/feedback")).status_code == 200
    assert httpx.get(f"{a.url}{SERVICE}/feedback/summary", timeout=10).status_code == 401
    with running_server({"GSHAP_DATABASE_URL": url, "GSHAP_ADMIN_KEYS": "adm-1"}) as s:
        assert httpx.get(f"{s.url}{SERVICE}/feedback/summary", timeout=10).status_code == 401
        r = httpx.get(f"{s.url}{SERVICE}/feedback/summary", headers={"X-API-Key": "adm-1"}, timeout=10)
        assert r.status_code == 200, r.text
        assert (
            httpx.get(f"{s.url}/cds-services/other/feedback/summary", headers={"X-API-Key": "adm-1"}).status_code == 404
        )
    body = r.json()
    total = db_rows(url, "SELECT count(*) FROM cds_feedback")[0][0]
    assert body["total"] == total >= 1
    assert sum(w["total"] for w in body["weeks"]) == total
    assert body["weeks"][0]["week"] == "2026-W48"
    uuids = {u for (u,) in db_rows(url, "SELECT uuid FROM cds_cards")}
    assert not any(u in r.text for u in uuids)


# ---- the database going down ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outage(signing: tuple[Any, Path]) -> Iterator[tuple[PostgresServer, LiveServer, LiveServer]]:
    """A PostgreSQL server of its own (it is stopped and started again), a replica with JWTs and one in open mode."""
    with ExitStack() as stack:
        pg = stack.enter_context(running_postgres())
        j = stack.enter_context(running_server(jwt_env(pg.url, signing[1])))
        o = stack.enter_context(
            running_server({"GSHAP_DATABASE_URL": pg.url, "GSHAP_CDS_FEEDBACK_MAX_PER_CARD": "100"})
        )
        yield pg, j, o


def _is_503_problem(r: httpx.Response) -> bool:
    return (
        r.status_code == 503
        and r.headers["content-type"].startswith("application/problem+json")
        and r.json()["type"].endswith("/store-unavailable")
        and int(r.headers["retry-after"]) > 0
    )


def _wait_until(check: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return False


def test_database_down_mid_call_then_back(
    outage: tuple[PostgresServer, LiveServer, LiveServer], signing: tuple[Any, Path]
) -> None:
    """While feedback requests are in flight the server is stopped (immediate: a crash): every answer is 200 or a
    503 problem, never a 500, and every acknowledged request's rows are in the database afterwards. While it is
    down: with JWTs, a CDS call whose jti cannot be checked is a 503 (fail closed); in open mode the card is
    served, not recorded, and feedback on it is refused once the database is back. Both replicas reconnect by
    themselves."""
    pg, j, o = outage
    key = signing[0]
    cards = [get_card(o).json()["cards"][0]["uuid"] for _ in range(4)]

    def post(i: int) -> tuple[str, int, httpx.Response]:
        card = cards[i % len(cards)]
        try:
            return card, i, send_feedback(o, card, n=1)
        except httpx.TransportError as exc:  # pragma: no cover - reported below
            raise AssertionError(f"the service stopped answering: {exc}") from None

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, i) for i in range(240)]
        time.sleep(0.3)
        pg.stop("immediate")
        answers = [f.result() for f in futures]
    statuses = [r.status_code for _, _, r in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert all(_is_503_problem(r) for _, _, r in answers if r.status_code == 503)
    assert 503 in statuses  # the outage was hit mid-flood
    acked: dict[str, int] = {}
    for card, _, r in answers:
        if r.status_code == 200:
            acked[card] = acked.get(card, 0) + r.json()["stored"]

    down_jwt = get_card(j, token(key))
    assert _is_503_problem(down_jwt), down_jwt.text
    unrecorded = get_card(o)
    assert unrecorded.status_code == 200
    unrecorded_uuid = unrecorded.json()["cards"][0]["uuid"]
    assert _is_503_problem(send_feedback(o, cards[0]))

    pg.start()
    assert _wait_until(lambda: get_card(j, token(key)).status_code == 200), "the JWT replica did not reconnect"
    assert _wait_until(lambda: send_feedback(o, cards[1]).status_code == 200), "the open replica did not reconnect"
    stored = dict(db_rows(pg.url, "SELECT card_uuid, count(*) FROM cds_feedback GROUP BY card_uuid"))
    for card, n in acked.items():
        assert stored[card] >= n + (1 if card == cards[1] else 0), (card, n, stored.get(card))
    refused = send_feedback(o, unrecorded_uuid)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["rule"] == "unknown_card"


# ---- no patient value in the database ---------------------------------------------------------------------------


TIME_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z|\d{4}-W\d{2}")


def _patient_values() -> tuple[set[str], set[float]]:
    """The bundle's identifying strings and its measured numbers."""
    strings: set[str] = {"Example", "Ada", "p-1001", "1976-03-14", "Practitioner/example"}
    numbers: set[float] = set()
    for res in resources(load("patient_bundle.json")):
        strings.add(res["id"])
        for part in [res.get("valueQuantity"), *[c.get("valueQuantity") for c in res.get("component", [])]]:
            if part and "value" in part:
                numbers.add(float(part["value"]))
        if "effectiveDateTime" in res:
            strings.add(res["effectiveDateTime"][:10])
    return strings, numbers


def test_no_patient_value_is_ever_written(
    replicas: tuple[str, LiveServer, LiveServer], signing: tuple[Any, Path]
) -> None:
    """Every cell of every table of the shared database, after cards and feedback (with a comment and a reason
    display naming the patient): no patient id, name, birth date, observation id or date, and no observation value,
    as text or as a number."""
    url, a, b = replicas
    key = signing[0]
    card = get_card(a, token(key)).json()["cards"][0]
    reason = {**card["overrideReasons"][0], "display": "Ada Example 1976-03-14 glucose 8.2"}
    r = send_feedback(b, card["uuid"], token(key, f"{SERVICE}/feedback"), overrideReason={
        "reason": reason, "userComment": "Ada's 2-h glucose 8.2 mmol/L, p-1001"})  # fmt: skip
    assert r.status_code == 200, r.text
    strings, numbers = _patient_values()
    tables = [t for (t,) in db_rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert {"cds_cards", "cds_feedback", "cds_jti", "gshap_counters", "gshap_schema"} <= set(tables)
    cells = 0
    for table in tables:
        for row in db_rows(url, f"SELECT * FROM {table}"):
            for cell in row:
                cells += 1
                if isinstance(cell, str):
                    assert not any(re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", cell) for s in strings), (
                        table,
                        cell,
                    )
                    if TIME_TEXT.fullmatch(cell):
                        continue  # the clinician's outcome time or week (its dates are checked above)
                    for n in numbers:
                        assert not re.search(rf"(?<![\w.]){re.escape(f'{n:g}')}(?![\w.])", cell), (table, cell)
                elif isinstance(cell, int | float):
                    assert float(cell) not in numbers or table == "gshap_schema", (table, cell)
    assert cells > 20


# ---- the hostile flood ----------------------------------------------------------------------------------------


def _db_bytes(engine: str, url: str, sqlite_file: Path) -> int:
    if engine == "postgresql":
        return int(db_rows(url, "SELECT pg_database_size(current_database())")[0][0])
    return sum(p.stat().st_size for p in sqlite_file.parent.glob(sqlite_file.name + "*"))


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_a_feedback_flood_stays_under_the_caps(engine: str, postgres: PostgresServer, tmp_path: Path) -> None:
    """The hostile client of the issue, in open mode (no JWT, no API key): forged requests (100 entries, 3 KB
    reason fields, card uuids never issued) and then feedback on real cards, 10 per card, from 8 threads for about
    20 s. The store ends at or under its row cap, answering 413/422 for the forged requests and a 503 with
    Retry-After past the cap; the service answers /readyz and serves cards throughout; no 500. Prints the rows,
    bytes and growth rate (the first store grew by about 58 MB/s under the same flood)."""
    cap = 1000
    sqlite_file = tmp_path / "state.sqlite3"
    url = ""
    env = {
        "GSHAP_CDS_FEEDBACK_MAX_ROWS": str(cap),
        "GSHAP_CDS_FEEDBACK_MAX_PER_CARD": "10",
        "GSHAP_CDS_FEEDBACK_MAX_ENTRIES": "20",
    }
    if engine == "postgresql":
        name = f"f_{uuid.uuid4().hex[:10]}"
        postgres.psql(f"CREATE DATABASE {name}")
        url = env["GSHAP_DATABASE_URL"] = f"postgresql://gshap@127.0.0.1:{postgres.port}/{name}"
    else:
        env["GSHAP_STATE_DB"] = str(sqlite_file)
    fat = {"system": "x" * 3000, "code": "y" * 3000, "display": "z" * 3000}
    forged = {
        "feedback": [
            {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": TIMESTAMP,
             "overrideReason": {"reason": fat}}
            for _ in range(100)
        ]
    }  # fmt: skip
    with running_server(env) as server:
        before = _db_bytes(engine, url, sqlite_file)
        statuses: dict[int, int] = {}
        probes: list[tuple[int, float]] = []
        stop = time.monotonic() + 20.0
        t0 = time.monotonic()

        def attacker(n: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while time.monotonic() < stop:
                    if n % 2 == 0:  # forged: too many entries, then the 20 allowed on cards never issued
                        for body in (forged, {"feedback": forged["feedback"][:20]}):
                            code = http.post(f"{SERVICE}/feedback", json=body).status_code
                            statuses[code] = statuses.get(code, 0) + 1
                        continue
                    card = http.post(SERVICE, json=cds_request(PREFETCH)).json()["cards"][0]
                    reason = card["overrideReasons"][0]
                    items = [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": TIMESTAMP,
                              "overrideReason": {"reason": reason}}] * 10  # fmt: skip
                    for body in ({"feedback": items}, {"feedback": items[:1]}):
                        r = http.post(f"{SERVICE}/feedback", json=body)
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                        if r.status_code == 503:
                            assert r.json()["type"].endswith("/store-full")
                            assert int(r.headers["retry-after"]) > 0

        def prober() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while time.monotonic() < stop:
                    t = time.monotonic()
                    code = http.get("/readyz").status_code
                    probes.append((code, time.monotonic() - t))
                    time.sleep(0.5)

        with ThreadPoolExecutor(9) as pool:
            futures = [pool.submit(attacker, n) for n in range(8)] + [pool.submit(prober)]
            for f in futures:
                f.result()
        elapsed = time.monotonic() - t0
        after = _db_bytes(engine, url, sqlite_file)
        if engine == "postgresql":
            rows = int(db_rows(url, "SELECT count(*) FROM cds_feedback")[0][0])
        else:
            import sqlite3

            with sqlite3.connect(sqlite_file) as conn:
                rows = int(conn.execute("SELECT count(*) FROM cds_feedback").fetchone()[0])
        final = get_card(server)
    growth = (after - before) / elapsed / 1e6
    print(
        f"\nflood {engine}: {sum(statuses.values())} feedback requests in {elapsed:.1f} s "
        f"{dict(sorted(statuses.items()))}; "
        f"{rows} rows (cap {cap}); database {before / 1e6:.2f} -> {after / 1e6:.2f} MB, {growth:.3f} MB/s "
        f"(the first store: ~58 MB/s); /readyz {len(probes)} probes, slowest {max(p[1] for p in probes):.2f} s"
    )
    assert rows <= cap
    assert rows == cap  # the flood reached the cap, so the 503 path was exercised
    assert statuses.get(503, 0) > 0
    assert statuses.get(413, 0) > 0
    assert statuses.get(422, 0) > 0
    assert 500 not in statuses
    assert all(code == 200 for code, _ in probes)
    assert final.status_code == 200
    assert growth < 1.0
