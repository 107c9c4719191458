"""The label log's hash chain: the canonical form of an event, its SHA-256, and the check of a run of links.

Every event stores `prev_hash` (the `event_hash` of the event before it in id order; `GENESIS_HASH` for the first)
and `event_hash`, the SHA-256 of its canonical content, which includes `prev_hash`. Changing, removing, inserting or
reordering any recorded event therefore breaks a link that `find_broken_link` reports. (Cutting events off the *end*
leaves a shorter valid chain: keep the head hash that `verify-labels` prints somewhere else to detect that too.)

Canonical content, version 1 (never change it; a new form gets a new `CHAIN_VERSION` and a migration):
the UTF-8 bytes of `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)` where `obj` is

    {"v": 1, "id": int, "sample_id": str, "previous_label": str|null, "new_label": str|null, "action": str,
     "reviewer": str, "created_at": "YYYY-MM-DDTHH:MM:SS.ffffffZ", "note": str, "checkpoint": str|null,
     "adjudication": true|false, "reverts_id": int|null, "prev_hash": "<64 lower-case hex digits>"}

`created_at` is the event's instant converted to UTC with microseconds (a naive value is UTC, as SQLite returns
what the store wrote), so the same event hashes the same on SQLite and PostgreSQL, in any server or client time zone.
`ensure_ascii` writes every non-ASCII character as a `\\uXXXX` escape, so the bytes do not depend on a text encoding
or on Unicode normalisation (text is hashed exactly as stored, never normalised).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

CHAIN_VERSION = 1
GENESIS_HASH = "0" * 64  # prev_hash of the first event
CHAINED_COLUMNS = ("id", "sample_id", "previous_label", "new_label", "action", "reviewer", "created_at", "note",
                   "checkpoint", "adjudication", "reverts_id")


@dataclass(frozen=True)
class BrokenLink:
    """The first place where the stored chain and the recomputed one disagree."""

    event_id: int  # the event whose link is broken
    problem: str  # one sentence: what differs (stored vs. recomputed hashes, or ids out of order)


def canonical_event_bytes(row: Mapping[str, Any], prev_hash: str) -> bytes:
    """The canonical serialisation (version 1) of one event row (a mapping with CHAINED_COLUMNS keys)."""
    created_at: datetime = row["created_at"]
    moment = created_at.replace(tzinfo=UTC) if created_at.tzinfo is None else created_at.astimezone(UTC)
    obj = {
        "v": CHAIN_VERSION,
        "id": int(row["id"]),
        "sample_id": row["sample_id"],
        "previous_label": row["previous_label"],
        "new_label": row["new_label"],
        "action": row["action"],
        "reviewer": row["reviewer"],
        "created_at": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "note": row["note"] or "",
        "checkpoint": row["checkpoint"],
        "adjudication": bool(row["adjudication"]),
        "reverts_id": None if row["reverts_id"] is None else int(row["reverts_id"]),
        "prev_hash": prev_hash,
    }
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def event_hash(row: Mapping[str, Any], prev_hash: str) -> str:
    """The SHA-256 (64 lower-case hex digits) of the event's canonical content chained onto `prev_hash`."""
    return hashlib.sha256(canonical_event_bytes(row, prev_hash)).hexdigest()


def find_broken_link(rows: Iterable[Mapping[str, Any]], *, expected_prev: str | None = GENESIS_HASH,
                     after_id: int | None = None) -> tuple[BrokenLink | None, int, str | None]:
    """Check rows (id order, with `prev_hash` and `event_hash`) link by link.

    `expected_prev`: the hash the first row must chain onto (GENESIS_HASH for the whole log; None: take the first
    row's own `prev_hash`, for checking only the newest links). `after_id`: the id before the first row, if known.
    Returns (the first broken link or None, rows checked, the last row's event_hash or None when there are no rows).
    """
    checked = 0
    last_id, last_hash = after_id, expected_prev
    for row in rows:
        event_id = int(row["id"])
        stored_prev, stored_hash = row["prev_hash"], row["event_hash"]
        if stored_prev is None or stored_hash is None:
            return BrokenLink(event_id, f"event {event_id} has no hash: it was written by something other than "
                                        "TaxaLens"), checked, last_hash
        if last_id is not None and event_id <= last_id:
            return BrokenLink(event_id, f"event {event_id} follows event {last_id}: ids out of order"), checked, \
                last_hash
        if last_hash is not None and stored_prev != last_hash:
            before = "the start of the log" if last_id is None else f"event {last_id}"
            return BrokenLink(event_id, f"event {event_id} chains onto {stored_prev[:16]}..., but {before} hashes to "
                                        f"{last_hash[:16]}...: an event before it was removed, inserted or "
                                        "changed"), checked, last_hash
        recomputed = event_hash(row, stored_prev)
        if recomputed != stored_hash:
            return BrokenLink(event_id, f"event {event_id}'s content was changed after it was recorded: its stored "
                                        f"hash is {stored_hash[:16]}..., its content now hashes to "
                                        f"{recomputed[:16]}..."), checked, last_hash
        checked += 1
        last_id, last_hash = event_id, stored_hash
    return None, checked, last_hash
