"""Concurrency limits on MongoDB (``rules.gate_open``), apart from the backend's module.

A job held back by its event's limit is stored with ``state: "parked"`` (out of the
``ready`` index, which claims walk) and read as ``queued`` by everyone else. A partial index,
``parked`` (q, event, eta, seq) of held-back jobs only, costs the other jobs nothing; the
running jobs of an event are counted along the ``leased`` index (q, state, lease_until),
a walk of the queue's running jobs made only by a claim that meets a job with a limit.

Exactness. A claim that meets a job with a limit runs as one multi-document transaction
that first writes the event's gate document (``sq_counters``, ``_id`` queue, U+001F,
``gate``, U+001F, event): every other such claim of the event, and every letting-through
after a limited job leaves ``running``, writes it too, so they conflict and go one after
the other (pymongo retries the loser from a fresh snapshot). Inside it, the running jobs
of the event are counted and each job is taken or held back. Two things a standalone
server (no transactions) cannot give, and a replica set gives all but the second of:

* without transactions, two claims at the same instant may both count a free slot and
  both take a job: the limit can be exceeded by concurrent claimers;
* a job of the event WITHOUT a limit of its own is claimed and finished without touching
  the gate document (it must cost nothing extra): one claimed at the very instant a
  limited claim counts is not seen by that count, and one that finishes just as a claim
  holds a job back may leave that job held back until the next job of the event leaves
  ``running``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..model import JobRecord, JobState
from .rules import MAX_BATCH, bytes_cut, gate_open, payload_size, take

PARKED = "parked"
#: The partial index of sq_jobs, merged into mongodb.INDEXES.
GATE_INDEXES: dict[str, tuple[list[tuple[str, int]], dict[str, Any]]] = {
    "parked": (
        [("q", 1), ("event", 1), ("eta", 1), ("seq", 1)],
        {"partialFilterExpression": {"state": PARKED}},
    ),
}


def _gate(backend: Any, event: str, session: Any) -> None:
    """Write the event's gate document: the point where limited claims conflict."""
    backend._counters.update_one(
        {"_id": backend._key(f"gate\x1f{event}")},
        {"$inc": {"writes": 1}},
        upsert=True,
        session=session,
    )


def _running(backend: Any, event: str, session: Any) -> int:
    return backend._jobs.count_documents(
        {"q": backend.queue, "event": event, "state": JobState.RUNNING.value},
        session=session,
        hint="leased",
    )


def claim_gated(
    backend: Any,
    routes: Sequence[str],
    owner: str,
    now: float,
    lease: float,
    limit: int,
    max_bytes: int | None,
) -> list[JobRecord]:
    """``Backend.claim`` when a job with a limit is among the first: in rounds, each job
    in order taken if its limit lets it through and held back if not, until the batch is
    full, the queues run out, ``max_bytes`` cuts, or MAX_BATCH jobs were held back."""

    def body(session: Any) -> list[JobRecord]:
        running: dict[str, int] = {}
        taken: list[JobRecord] = []
        used, held = 0, 0
        query = {"q": backend.queue, "state": JobState.QUEUED.value, "route": {"$in": list(routes)}}
        while len(taken) < limit and held < MAX_BATCH:
            found = list(
                backend._jobs.find(query, session=session, hint="ready")
                .sort([("eta", 1), ("seq", 1)])
                .limit(limit - len(taken))
            )
            if not found:
                break
            refused = cut = False
            for document in found:
                r = backend._record(document)
                if r.concurrency is not None and r.event not in running:
                    _gate(backend, r.event, session)
                    running[r.event] = _running(backend, r.event, session)
                if not gate_open(r, running.get(r.event, 0)):
                    backend._jobs.update_one(
                        {"_id": document["_id"], "state": JobState.QUEUED.value},
                        {"$set": {"state": PARKED}},
                        session=session,
                    )
                    refused = True
                    held += 1
                    if held >= MAX_BATCH:
                        break
                    continue
                size = payload_size(r.payload)
                if not bytes_cut([size], max_bytes, len(taken), used):
                    cut = True
                    break
                take(r, owner, now, lease)
                done = backend._jobs.update_one(
                    {"_id": document["_id"], "state": JobState.QUEUED.value},
                    {
                        "$set": {
                            "state": r.state.value,
                            "owner": owner,
                            "lease_until": r.lease_until,
                            "started_at": now,
                        },
                        "$inc": {"deliveries": 1},
                    },
                    session=session,
                )
                if done.modified_count != 1:
                    continue  # another claimer took it (standalone: no transaction)
                used += size
                taken.append(r)
                if r.event in running:
                    running[r.event] += 1
            if cut or not refused:
                break
        return taken

    taken = backend._transaction(body) if backend.transactions else body(None)
    return sorted(taken, key=lambda r: (r.eta, r.seq))


def let_through(backend: Any, left: Sequence[JobRecord], cancelled: bool = False) -> None:
    """Jobs ``left`` ``running`` (or, ``cancelled``, queued jobs with a limit were
    cancelled): as many held-back jobs of each of their events, first in (eta, seq)
    order, go back to their queues. A probe of the (empty, unless a job is held back)
    parked index first, so jobs without limits pay one small query per call. Where one
    of the jobs had a limit, the letting-through runs in a transaction that writes the
    event's gate document (see the module docstring)."""
    if not left:
        return
    probe = backend._jobs.find_one(
        {"q": backend.queue, "state": PARKED}, projection={"_id": 1}, hint="parked"
    )
    if probe is None:
        return
    per_event = Counter(r.event for r in left)
    gated = {r.event for r in left if r.concurrency is not None or cancelled}

    def body(session: Any) -> None:
        for event, n in per_event.items():
            if event in gated:
                _gate(backend, event, session)
            heads = list(
                backend._jobs.find(
                    {"q": backend.queue, "event": event, "state": PARKED},
                    projection={"_id": 1},
                    session=session,
                    hint="parked",
                )
                .sort([("eta", 1), ("seq", 1)])
                .limit(n)
            )
            for head in heads:
                backend._jobs.update_one(
                    {"_id": head["_id"], "state": PARKED},
                    {"$set": {"state": JobState.QUEUED.value}},
                    session=session,
                )

    if gated and backend.transactions:
        backend._transaction(body)
    else:
        body(None)
