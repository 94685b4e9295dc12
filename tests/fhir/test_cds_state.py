"""The CDS state database (service.fhir.state, service.fhir.feedback) on both engines, SQLite and a real
PostgreSQL: migrations under the lock, the jti replay cache, feedback only for issued cards and their own reasons,
the caps, retention, the legacy SQLite store's migration and ``gshap db import``."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.cli import main as gshap
from service.fhir.card import OVERRIDE_REASONS, OVERRIDE_SYSTEM
from service.fhir.cdshooks import Feedback
from service.fhir.feedback import FeedbackLimits, FeedbackRefusedError, FeedbackStore
from service.fhir.state import (
    SCHEMA_VERSION,
    CleanupLimits,
    Database,
    ReplayStore,
    StateDatabase,
    StoreFullError,
    cleanup,
    migrate,
    open_database,
)

SERVICE = "diabetes-risk"
LEGACY_SYSTEM = "https://gshap.dev/cds/override-reasons"  # the first store's cards' code system


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateDatabase]:
    """A migrated state database of each engine (a new PostgreSQL database per test)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    db = StateDatabase(url, tmp_path / "state.sqlite3")
    db()
    yield db
    db.close()


def card(reasons: Any = None) -> dict[str, Any]:
    if reasons is None:
        reasons = [{"system": OVERRIDE_SYSTEM, "code": c, "display": d} for c, d in OVERRIDE_REASONS]
    return {"uuid": str(uuid.uuid4()), "overrideReasons": reasons}


def item(card_uuid: str, reason: dict[str, str] | None = None, **extra: Any) -> Feedback:
    body: dict[str, Any] = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": "2026-11-29T10:05:31Z"}
    if reason is not None:
        body["overrideReason"] = {"reason": reason}
    return Feedback.model_validate({**body, **extra})


def count(db: Database, table: str) -> int:
    with db.transaction() as tx:
        return int(tx.scalar(f"SELECT count(*) FROM {table}"))


def test_migrations_run_once_and_are_idempotent(state: StateDatabase) -> None:
    """A migrated database migrates again to the same version and records each version once."""
    assert migrate(state()) == (SCHEMA_VERSION, SCHEMA_VERSION)
    with state().transaction() as tx:
        assert [r[0] for r in tx.rows("SELECT version FROM gshap_schema ORDER BY version")] == [1, 2]


def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    """Six processes' databases migrating the same PostgreSQL at once: the advisory lock lets exactly one apply
    the migrations; the others find the schema current."""
    results: list[tuple[int, int]] = []
    dbs = [open_database(pg_url, Path("unused")) for _ in range(6)]
    barrier = threading.Barrier(len(dbs))

    def run(db: Database) -> None:
        barrier.wait()
        results.append(migrate(db))

    threads = [threading.Thread(target=run, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for db in dbs:
        db.close()
    assert sorted(results) == [(0, SCHEMA_VERSION)] + [(SCHEMA_VERSION, SCHEMA_VERSION)] * 5


def test_replay_cache_refuses_a_seen_jti_until_it_expires(state: StateDatabase) -> None:
    """A (issuer, jti) pair is new once; again before its expiry it is a replay; after it, new again. The same jti
    from another issuer is another pair."""
    replay = ReplayStore(state)
    now = time.time()
    assert replay.remember("iss-a", "j-1", now + 60, now=now)
    assert not replay.remember("iss-a", "j-1", now + 60, now=now + 30)
    assert replay.remember("iss-b", "j-1", now + 60, now=now + 30)
    assert replay.remember("iss-a", "j-1", now + 200, now=now + 61)


def test_feedback_only_for_issued_cards_and_their_own_reasons(state: StateDatabase) -> None:
    """Feedback on an unknown card, or with a reason the card did not offer (another code or another system), is
    refused whole (422, naming the entry) and nothing is stored; a good request stores the reason by code only."""
    store = FeedbackStore(state)
    issued = card()
    assert store.issue(SERVICE, issued, "m 1.0")
    good = {"system": OVERRIDE_SYSTEM, "code": "data-wrong", "display": "free text that is never stored"}
    for bad in (
        [item(str(uuid.uuid4()))],
        [item(issued["uuid"], good), item(issued["uuid"], {**good, "code": "made-up"})],
        [item(issued["uuid"], {**good, "system": "https://elsewhere.example/reasons"})],
    ):
        with pytest.raises(FeedbackRefusedError) as refused:
            store.add(SERVICE, bad)
        assert refused.value.status == 422
        assert refused.value.refusals[0].field.startswith(f"feedback.{len(bad) - 1}.")
    assert store.rows() == []
    assert store.add(SERVICE, [item(issued["uuid"], good)]) == 1
    [row] = store.rows()
    assert (row["card_uuid"], row["model_version"], row["override_code"]) == (issued["uuid"], "m 1.0", "data-wrong")
    assert "never stored" not in repr(row)


def test_entries_rows_per_card_and_total_rows_are_capped(state: StateDatabase) -> None:
    """Too many entries in one request: 413. Past the rows per card: 422 for that card. Past the total: the store
    refuses (503 in the web layer) and keeps every row it acknowledged; the card table stops recording at its cap."""
    store = FeedbackStore(state, FeedbackLimits(max_entries=3, max_per_card=2, max_rows=5, max_cards=4))
    cards = [card() for _ in range(4)]
    assert all(store.issue(SERVICE, c, "m") for c in cards)
    assert not store.issue(SERVICE, card(), "m")  # the fifth card is not recorded
    with pytest.raises(FeedbackRefusedError) as too_many:
        store.add(SERVICE, [item(cards[0]["uuid"])] * 4)
    assert (too_many.value.status, too_many.value.refusals[0].rule) == (413, "max_entries")
    assert store.add(SERVICE, [item(cards[0]["uuid"])] * 2) == 2
    with pytest.raises(FeedbackRefusedError) as per_card:
        store.add(SERVICE, [item(cards[0]["uuid"])])
    assert per_card.value.refusals[0].rule == "max_per_card"
    assert store.add(SERVICE, [item(cards[1]["uuid"])] * 2) == 2
    assert store.add(SERVICE, [item(cards[2]["uuid"])]) == 1
    acknowledged = store.rows()
    with pytest.raises(StoreFullError) as full:
        store.add(SERVICE, [item(cards[3]["uuid"])])
    assert full.value.retry_after > 0
    assert store.rows() == acknowledged
    assert len(acknowledged) == 5


def test_retention_deletes_old_rows_in_bounded_rounds(state: StateDatabase) -> None:
    """Cleanup deletes expired jti entries and cards and feedback past their retention, at most ``batch`` rows of
    each per round, and frees the counted room: a full store takes feedback again."""
    store = FeedbackStore(state, FeedbackLimits(max_rows=3, max_per_card=10))
    old, new = card(), card()
    t0 = time.time() - 10 * 86400
    store.issue(SERVICE, old, "m", now=t0)
    store.issue(SERVICE, new, "m")
    store.add(SERVICE, [item(old["uuid"])] * 3, now=t0)
    replay = ReplayStore(state)
    for i in range(5):
        replay.remember("iss", f"j-{i}", t0 + 60, now=t0)
    with pytest.raises(StoreFullError):
        store.add(SERVICE, [item(new["uuid"])])
    limits = CleanupLimits(card_retention_s=86400, feedback_retention_s=86400, batch=2)
    assert cleanup(state(), limits) == {"cds_jti": 2, "cds_cards": 1, "cds_feedback": 2}
    assert cleanup(state(), limits) == {"cds_jti": 2, "cds_cards": 0, "cds_feedback": 1}
    assert cleanup(state(), limits) == {"cds_jti": 1, "cds_cards": 0, "cds_feedback": 0}
    assert store.add(SERVICE, [item(new["uuid"])]) == 1
    with pytest.raises(FeedbackRefusedError):  # the old card is gone with its retention
        store.add(SERVICE, [item(old["uuid"])])


def legacy_file(path: Path) -> None:
    """An SQLite file as the first feedback store wrote it, with a forged 300 KB reason like the hostile client's."""
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, received_at TEXT NOT NULL, service_id TEXT "
        "NOT NULL, card_uuid TEXT NOT NULL, outcome TEXT NOT NULL CHECK (outcome IN ('accepted', 'overridden')), "
        "outcome_timestamp TEXT NOT NULL, accepted_suggestions TEXT, override_system TEXT, override_code TEXT, "
        "override_display TEXT, has_user_comment INTEGER NOT NULL DEFAULT 0)"
    )
    conn.executemany(
        "INSERT INTO feedback (received_at, service_id, card_uuid, outcome, outcome_timestamp, accepted_suggestions, "
        "override_system, override_code, override_display, has_user_comment) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                "2026-11-01T10:00:00Z",
                SERVICE,
                "c-1",
                "overridden",
                "2026-11-01T09:59:00Z",
                None,
                LEGACY_SYSTEM,
                "not-relevant",
                "Ada Lovelace's glucose 8.2",
                1,
            ),
            (
                "2026-11-01T10:01:00Z",
                SERVICE,
                "c-2",
                "accepted",
                "2026-11-01T10:00:00Z",
                '["s-1", "s-2"]',
                None,
                None,
                None,
                0,
            ),
            (
                "2026-11-01T10:02:00Z",
                SERVICE,
                "c-3",
                "overridden",
                "2026-11-01T10:01:00Z",
                None,
                "x" * 300_000,
                "y" * 300_000,
                "z" * 300_000,
                0,
            ),
        ],
    )
    conn.commit()
    conn.close()


def _check_moved(rows: list[tuple[Any, ...]]) -> None:
    assert rows == [
        ("c-1", "overridden", "not-relevant", 0, 1),
        ("c-2", "accepted", None, 2, 0),
        ("c-3", "overridden", None, 0, 0),
    ]


def test_the_first_stores_sqlite_file_migrates_in_place(tmp_path: Path) -> None:
    """An old feedback file opens as version 2: its rows moved, reasons by code (a forged one dropped), no display
    text, the suggestion ids counted; the old table gone."""
    path = tmp_path / "cds-feedback.sqlite3"
    legacy_file(path)
    db = StateDatabase(None, path)
    with db().transaction() as tx:
        rows = tx.rows(
            "SELECT card_uuid, outcome, override_code, accepted_suggestions, has_user_comment FROM cds_feedback "
            "ORDER BY id"
        )
        tables = {r[0] for r in tx.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tx.scalar("SELECT value FROM gshap_counters WHERE name = 'feedback_rows'") == 3
    db.close()
    _check_moved(rows)
    assert "feedback" not in tables


def test_gshap_db_import_moves_an_sqlite_store_into_postgresql(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``gshap db upgrade`` creates the schema; ``gshap db import FILE`` moves an old SQLite store's rows into
    PostgreSQL (forged reasons dropped, no display text), all in one transaction; without the URL it refuses."""
    path = tmp_path / "old.sqlite3"
    legacy_file(path)
    monkeypatch.setenv("GSHAP_DATABASE_URL", pg_url)
    assert gshap(["db", "upgrade"]) == 0
    assert f"schema version 0 -> {SCHEMA_VERSION}" in capsys.readouterr().out
    assert gshap(["db", "import", str(path)]) == 0
    assert "imported 3 feedback rows" in capsys.readouterr().out
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT card_uuid, outcome, override_code, accepted_suggestions, has_user_comment FROM cds_feedback "
            "ORDER BY id"
        ).fetchall()
    _check_moved([tuple(r) for r in rows])
    monkeypatch.delenv("GSHAP_DATABASE_URL")
    assert gshap(["db", "import", str(path)]) == 2
    assert "GSHAP_DATABASE_URL" in capsys.readouterr().err


def test_an_unreachable_database_is_unavailable_and_picked_up_later(tmp_path: Path) -> None:
    """A PostgreSQL URL where nothing listens: every use raises StoreUnavailableError quickly (no hang), and the
    holder tries again on later use."""
    from live_server import free_port

    from service.fhir.state import StoreUnavailableError

    db = StateDatabase(f"postgresql://gshap@127.0.0.1:{free_port()}/gshap", tmp_path / "x", timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        db()
    with pytest.raises(StoreUnavailableError):
        db()
    assert time.monotonic() - t0 < 10
    db.close()


def test_the_sqlite_file_setting_and_its_alias(tmp_path: Path) -> None:
    """GSHAP_STATE_DB names the SQLite file; GSHAP_CDS_FEEDBACK_DB, its older name, still works when it is unset."""
    from service.config import Settings

    a, b = tmp_path / "a.sqlite3", tmp_path / "b.sqlite3"
    assert Settings(state_db=a, cds_feedback_db=b).feedback_db_path() == a
    assert Settings(cds_feedback_db=b).feedback_db_path() == b
    assert (
        Settings(database_url="postgresql://u:secret@h/db").as_env()["GSHAP_DATABASE_URL"]
        == "postgresql://u:secret@h/db"
    )
