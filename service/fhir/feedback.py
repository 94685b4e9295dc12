"""The CDS feedback store: bounded, and only for cards this service issued. No patient value, no free text.

- Every card the service sends is recorded (:meth:`FeedbackStore.issue`): its uuid, the model version, the time and
  the override codes it offered; nothing of the patient. The table is capped (``max_cards``: past it a card is
  served but not recorded) and cards older than the card retention are deleted.
- Feedback (:meth:`FeedbackStore.add`) is accepted only for a recorded card; an override reason must be one of that
  card's own codings (same system and code) and is stored by its code only (its ``display``, free text a client
  could fill, is not stored; nor is the user's comment, only whether there was one; accepted suggestions are
  counted, their ids not stored).
- Caps: entries per request (``max_entries``, 413), rows per card (``max_per_card``, 422), total rows
  (``max_rows``: past it :class:`~service.fhir.state.StoreFullError`, a 503 with ``Retry-After``). A request is
  stored whole or not at all, and it is acknowledged only after its transaction committed; no stored row is ever
  evicted to make room (only retention deletes rows, by age).

The rows live in :mod:`service.fhir.state`'s database (PostgreSQL shared by replicas, or SQLite on one machine).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from service.fhir.state import CARDS, FEEDBACK_ROWS, LEGACY_SELECT, Database, StoreFullError, Tx, iso_week

__all__ = [
    "FeedbackLimits",
    "FeedbackRefusedError",
    "FeedbackStore",
    "FeedbackSummary",
    "Refusal",
    "copy_legacy_rows",
    "import_sqlite",
]

FULL_RETRY_AFTER_S = 3600
# the override reasons' code system of the cards before 0.2.0 (the rows of the first store carry it)
LEGACY_OVERRIDE_SYSTEM = "https://gshap.dev/cds/override-reasons"


@dataclass(frozen=True)
class FeedbackLimits:
    """The caps and the card retention (seconds)."""

    max_entries: int = 20
    max_per_card: int = 10
    max_rows: int = 1_000_000
    max_cards: int = 1_000_000
    card_retention_s: float = 30 * 86400.0


@dataclass(frozen=True)
class Refusal:
    """One broken rule of a feedback request: the field (``feedback.<i>.card``), the rule and why."""

    field: str
    rule: str
    message: str
    limit: int | None = None


@dataclass
class FeedbackRefusedError(Exception):
    """The request is refused as a whole (nothing stored): 413 (too many entries) or 422 (a rule broken)."""

    status: int
    refusals: list[Refusal] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(f"{r.field}: {r.message}" for r in self.refusals)


class WeekCounts(BaseModel):
    """Feedback on one model version's cards in one ISO week (of the clinicians' outcome time)."""

    modelVersion: str = Field(..., description="The model version of the card the feedback is about.")
    week: str = Field(..., description="ISO week of the outcome, e.g. 2026-W48.")
    total: int = Field(..., description="Outcomes in this week for this model version.")
    outcomes: dict[str, int] = Field(..., description="Counts by outcome (accepted, overridden).")
    overrideReasons: dict[str, int] = Field(
        ..., description="Overridden outcomes by reason code; those without a reason are counted under 'none'."
    )
    withUserComment: int = Field(..., description="Overridden outcomes that came with a comment (never stored).")


class FeedbackSummary(BaseModel):
    """Counts of the stored feedback (no patient data, no card uuid), for the people who tune the model."""

    serviceId: str = Field(..., description="The CDS service.")
    total: int = Field(..., description="Feedback rows stored.")
    outcomes: dict[str, int] = Field(..., description="Counts by outcome over all versions and weeks.")
    overrideReasons: dict[str, int] = Field(..., description="Counts by override reason code ('none': no reason).")
    weeks: list[WeekCounts] = Field(..., description="Per model version and ISO week, oldest week first.")


def _utc_seconds(timestamp: str) -> str:
    """The outcome time normalised to whole seconds (the fraction could carry arbitrary digits)."""
    parsed = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone(dt.UTC)
    return parsed.replace(microsecond=0).isoformat().replace("+00:00", "Z")


class FeedbackStore:
    """Issued cards and their feedback in the state database (a callable gives the open database)."""

    def __init__(self, db: Callable[[], Database], limits: FeedbackLimits | None = None) -> None:
        self._db = db
        self.limits = limits or FeedbackLimits()

    # ---- cards ------------------------------------------------------------------------------------------------------

    def issue(self, service_id: str, card: dict[str, Any], model_version: str, *, now: float | None = None) -> bool:
        """Record a card about to be sent; False when the card table is full (the card is then not recorded and
        feedback for it will be refused). :class:`~service.fhir.state.StoreUnavailableError` when unreachable."""
        now = time.time() if now is None else now
        reasons = card.get("overrideReasons") or []
        systems = {r["system"] for r in reasons}
        system = systems.pop() if len(systems) == 1 else None
        codes = " ".join(r["code"] for r in reasons) if system is not None else ""
        with self._db().transaction() as tx:
            if not _take(tx, CARDS, 1, self.limits.max_cards):
                return False
            tx.run(
                "INSERT INTO cds_cards (uuid, service_id, model_version, issued_at, reason_system, reason_codes) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (card["uuid"], service_id, model_version, now, system, codes),
            )
        return True

    # ---- feedback ---------------------------------------------------------------------------------------------------

    def check_size(self, items: Sequence[Any]) -> None:
        """413 before any database work when one request carries more entries than allowed."""
        if len(items) > self.limits.max_entries:
            raise FeedbackRefusedError(
                413,
                [
                    Refusal(
                        "feedback",
                        "max_entries",
                        f"{len(items)} entries; at most {self.limits.max_entries} in one request "
                        "(GSHAP_CDS_FEEDBACK_MAX_ENTRIES)",
                        self.limits.max_entries,
                    )
                ],
            )

    def add(self, service_id: str, items: Sequence[Any], *, now: float | None = None) -> int:
        """Store the feedback items (``service.fhir.cdshooks.Feedback``) in one transaction; the count stored.
        Raises :class:`FeedbackRefusedError` (nothing stored), :class:`~service.fhir.state.StoreFullError` or
        :class:`~service.fhir.state.StoreUnavailableError`."""
        self.check_size(items)
        now = time.time() if now is None else now
        oldest = now - self.limits.card_retention_s
        uuids = sorted({item.card for item in items})
        with self._db().transaction() as tx:
            marks = ", ".join("?" for _ in uuids)
            cards = {
                row[0]: row[1:]
                for row in tx.rows(
                    f"SELECT uuid, model_version, reason_system, reason_codes FROM cds_cards "
                    f"WHERE service_id = ? AND issued_at >= ? AND uuid IN ({marks})",
                    (service_id, oldest, *uuids),
                )
            }
            refusals: list[Refusal] = []
            rows = []
            per_card: dict[str, int] = {}
            for i, item in enumerate(items):
                known = cards.get(item.card)
                if known is None:
                    refusals.append(
                        Refusal(
                            f"feedback.{i}.card",
                            "unknown_card",
                            "not a card this service issued (or older than GSHAP_CDS_CARD_RETENTION_DAYS)",
                        )
                    )
                    continue
                model_version, system, codes = known
                reason = item.overrideReason.reason if item.overrideReason is not None else None
                code = None
                if reason is not None:
                    if reason.system != system or reason.code not in codes.split():
                        refusals.append(
                            Refusal(
                                f"feedback.{i}.overrideReason.reason",
                                "not_a_card_reason",
                                "must be one of the card's overrideReasons (same system and code)",
                            )
                        )
                        continue
                    code = reason.code
                comment = item.overrideReason is not None and item.overrideReason.userComment is not None
                per_card[item.card] = per_card.get(item.card, 0) + 1
                rows.append(
                    (
                        now,
                        service_id,
                        item.card,
                        model_version,
                        item.outcome,
                        _utc_seconds(item.outcomeTimestamp),
                        iso_week(item.outcomeTimestamp),
                        len(item.acceptedSuggestions or ()),
                        code,
                        int(comment),
                    )
                )
            if refusals:
                raise FeedbackRefusedError(422, refusals)
            for uuid, n in sorted(per_card.items()):
                took = tx.rows(
                    "UPDATE cds_cards SET feedback_rows = feedback_rows + ? WHERE uuid = ? AND feedback_rows + ? <= ? "
                    "RETURNING uuid",
                    (n, uuid, n, self.limits.max_per_card),
                )
                if not took:
                    index = next(i for i, item in enumerate(items) if item.card == uuid)
                    raise FeedbackRefusedError(
                        422,
                        [
                            Refusal(
                                f"feedback.{index}.card",
                                "max_per_card",
                                f"this card has its {self.limits.max_per_card} feedback rows already "
                                "(GSHAP_CDS_FEEDBACK_MAX_PER_CARD)",
                                self.limits.max_per_card,
                            )
                        ],
                    )
            if not _take(tx, FEEDBACK_ROWS, len(rows), self.limits.max_rows):
                raise StoreFullError(
                    f"the feedback store holds its {self.limits.max_rows} rows (GSHAP_CDS_FEEDBACK_MAX_ROWS); "
                    "retention frees room",
                    FULL_RETRY_AFTER_S,
                )
            tx.many(
                "INSERT INTO cds_feedback (received_at, service_id, card_uuid, model_version, outcome, outcome_at, "
                "outcome_week, accepted_suggestions, override_code, has_user_comment) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    # ---- reading ----------------------------------------------------------------------------------------------------

    def summary(self, service_id: str) -> FeedbackSummary:
        """Counts per outcome and override reason, per model version and ISO week."""
        with self._db().transaction() as tx:
            got = tx.rows(
                "SELECT coalesce(model_version, 'unknown'), outcome_week, outcome, coalesce(override_code, 'none'), "
                "has_user_comment, count(*) FROM cds_feedback WHERE service_id = ? "
                "GROUP BY 1, 2, 3, 4, 5 ORDER BY 2, 1, 3, 4",
                (service_id,),
            )
        weeks: dict[tuple[str, str], WeekCounts] = {}
        outcomes: dict[str, int] = {}
        reasons: dict[str, int] = {}
        for version, week, outcome, code, comment, count in got:
            n = int(count)
            w = weeks.setdefault(
                (week, version),
                WeekCounts(
                    modelVersion=version, week=week, total=0, outcomes={}, overrideReasons={}, withUserComment=0
                ),
            )
            w.total += n
            w.outcomes[outcome] = w.outcomes.get(outcome, 0) + n
            outcomes[outcome] = outcomes.get(outcome, 0) + n
            if outcome == "overridden":
                w.overrideReasons[code] = w.overrideReasons.get(code, 0) + n
                reasons[code] = reasons.get(code, 0) + n
                w.withUserComment += n if comment else 0
        return FeedbackSummary(
            serviceId=service_id,
            total=sum(outcomes.values()),
            outcomes=outcomes,
            overrideReasons=reasons,
            weeks=[weeks[k] for k in sorted(weeks)],
        )

    def rows(self) -> list[dict[str, Any]]:
        """Every stored feedback row, oldest first (for tests and audits)."""
        with self._db().transaction() as tx:
            names = (
                "id, received_at, service_id, card_uuid, model_version, outcome, outcome_at, outcome_week, "
                "accepted_suggestions, override_code, has_user_comment"
            )
            got = tx.rows(f"SELECT {names} FROM cds_feedback ORDER BY id")
        keys = [n.strip() for n in names.split(",")]
        return [dict(zip(keys, row, strict=True)) for row in got]


def _take(tx: Tx, counter: str, n: int, cap: int) -> bool:
    """Add ``n`` to a counter if it stays within ``cap`` (atomic: the row is locked until the transaction ends)."""
    return bool(
        tx.rows(
            "UPDATE gshap_counters SET value = value + ? WHERE name = ? AND value + ? <= ? RETURNING value",
            (n, counter, n, cap),
        )
    )


def copy_legacy_rows(tx: Tx, rows: Sequence[Sequence[Any]], *, max_rows: int | None = None) -> dict[str, int]:
    """Move rows of the first SQLite store (``feedback`` table: received_at text, service_id, card_uuid, outcome,
    outcome_timestamp, the count of accepted suggestions, override_system, override_code, has_user_comment) into
    ``cds_feedback``. The old store checked neither the card nor the reason: a reason that is not one of the
    service's own codes is dropped (the row is kept, without a reason), its display text is never copied, and the
    suggestion ids become their count. Counts: ``copied``, ``reasons_dropped``, ``skipped`` (unreadable or past
    ``max_rows``)."""
    from service.fhir.card import OVERRIDE_REASONS, OVERRIDE_SYSTEM

    known = {code for code, _ in OVERRIDE_REASONS}
    systems = {OVERRIDE_SYSTEM, LEGACY_OVERRIDE_SYSTEM}
    out = {"copied": 0, "reasons_dropped": 0, "skipped": 0}
    batch: list[tuple[Any, ...]] = []
    for received, service_id, card, outcome, timestamp, accepted, system, old_code, comment in rows:
        try:
            received_at = dt.datetime.fromisoformat(str(received).replace("Z", "+00:00")).timestamp()
            when = _utc_seconds(str(timestamp))
            week = iso_week(str(timestamp))
            suggestions = int(accepted or 0)
        except (ValueError, TypeError):
            out["skipped"] += 1
            continue
        if outcome not in ("accepted", "overridden") or not isinstance(card, str) or len(card) > 256:
            out["skipped"] += 1
            continue
        if max_rows is not None and out["copied"] + len(batch) >= max_rows:
            out["skipped"] += 1
            continue
        code = old_code
        if code is not None and (system not in systems or code not in known):
            out["reasons_dropped"] += 1
            code = None
        batch.append(
            (received_at, str(service_id)[:64], card, None, outcome, when, week, suggestions, code, int(bool(comment)))
        )
        if len(batch) >= 1000:
            _insert_legacy(tx, batch)
            out["copied"] += len(batch)
            batch = []
    if batch:
        _insert_legacy(tx, batch)
        out["copied"] += len(batch)
    tx.run("UPDATE gshap_counters SET value = value + ? WHERE name = ?", (out["copied"], FEEDBACK_ROWS))
    return out


def _insert_legacy(tx: Tx, batch: list[tuple[Any, ...]]) -> None:
    tx.many(
        "INSERT INTO cds_feedback (received_at, service_id, card_uuid, model_version, outcome, outcome_at, "
        "outcome_week, accepted_suggestions, override_code, has_user_comment) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        batch,
    )


def import_sqlite(db: Database, path: Path, *, max_rows: int | None = None) -> dict[str, int]:
    """Move an SQLite feedback store (the first store's ``feedback`` table, or this schema's ``cds_feedback`` and
    ``cds_cards``) into ``db`` (``gshap db import``), in one transaction: all or nothing. The source is opened
    read-only and left as it is. Counts: ``copied``, ``reasons_dropped``, ``skipped``, ``cards``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "feedback" in tables:
            legacy = Tx(src, "sqlite")
            rows = list(legacy.stream(LEGACY_SELECT))
            with db.transaction() as tx:
                out = copy_legacy_rows(tx, rows, max_rows=max_rows)
                out["cards"] = 0
            return out
        if "cds_feedback" not in tables:
            raise ValueError(f"{path} holds no feedback table (feedback or cds_feedback)")
        feedback = src.execute(
            "SELECT received_at, service_id, card_uuid, model_version, outcome, outcome_at, outcome_week, "
            "accepted_suggestions, override_code, has_user_comment FROM cds_feedback ORDER BY id"
        ).fetchall()
        cards = src.execute(
            "SELECT uuid, service_id, model_version, issued_at, reason_system, reason_codes, feedback_rows "
            "FROM cds_cards"
        ).fetchall()
    finally:
        src.close()
    with db.transaction() as tx:
        room = (
            max_rows - int(tx.scalar("SELECT value FROM gshap_counters WHERE name = ?", (FEEDBACK_ROWS,)))
            if (max_rows is not None)
            else len(feedback)
        )
        taken = feedback[: max(0, room)]
        for start in range(0, len(taken), 1000):
            _insert_legacy(tx, [tuple(r) for r in taken[start : start + 1000]])
        tx.run("UPDATE gshap_counters SET value = value + ? WHERE name = ?", (len(taken), FEEDBACK_ROWS))
        new_cards = 0
        for card in cards:
            new_cards += tx.run(
                "INSERT INTO cds_cards (uuid, service_id, model_version, issued_at, reason_system, reason_codes, "
                "feedback_rows) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (uuid) DO NOTHING",
                card,
            )
        tx.run("UPDATE gshap_counters SET value = value + ? WHERE name = ?", (new_cards, CARDS))
    return {"copied": len(taken), "reasons_dropped": 0, "skipped": len(feedback) - len(taken), "cards": new_cards}
