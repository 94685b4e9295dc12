"""The CDS feedback store: SQLite, one row per outcome, no patient values.

Stored: when it was received, the service id, the card's uuid, the outcome (``accepted``/``overridden``), the
outcome's timestamp, the accepted suggestions' ids, the override reason's coding, and whether the user wrote a
comment (never the comment itself: free text may name the patient). The file is local to one replica: with several
replicas, each keeps its own (collect them, or point GSHAP_CDS_FEEDBACK_DB at a path per replica and merge).
Writes run in a worker thread; WAL mode keeps readers and the writer apart.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["FeedbackStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    service_id TEXT NOT NULL,
    card_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('accepted', 'overridden')),
    outcome_timestamp TEXT NOT NULL,
    accepted_suggestions TEXT,
    override_system TEXT,
    override_code TEXT,
    override_display TEXT,
    has_user_comment INTEGER NOT NULL DEFAULT 0
)
"""


class FeedbackStore:
    """An SQLite file of feedback rows; thread-safe (one connection, one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(_SCHEMA)

    def add(self, service_id: str, items: Sequence[Any]) -> int:
        """Store the feedback items (``service.fhir.cdshooks.Feedback``) in one transaction; returns the count."""
        now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
        rows = []
        for item in items:
            reason = item.overrideReason.reason if item.overrideReason is not None else None
            comment = item.overrideReason is not None and item.overrideReason.userComment is not None
            accepted = json.dumps([s.id for s in item.acceptedSuggestions]) if item.acceptedSuggestions else None
            rows.append(
                (
                    now,
                    service_id,
                    item.card,
                    item.outcome,
                    item.outcomeTimestamp,
                    accepted,
                    reason.system if reason else None,
                    reason.code if reason else None,
                    reason.display if reason else None,
                    int(comment),
                )
            )
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO feedback (received_at, service_id, card_uuid, outcome, outcome_timestamp, "
                    "accepted_suggestions, override_system, override_code, override_display, has_user_comment) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return len(rows)

    def rows(self) -> list[dict[str, Any]]:
        """Every stored row, oldest first (for tests and audits)."""
        with self._lock:
            cur = self._conn.execute("SELECT * FROM feedback ORDER BY id")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
