"""``JobInfo``: everything stored about one job, decoded for people and for ``--json``.

What ``JobHandle.info()`` and ``skunq show`` return. Arguments and the result are
decoded only where that is safe: JSON always; a pickled payload only where the caller
opted in to pickle (the queue or the event, as ``decode_result`` requires). Otherwise
``undecoded`` says why they were left as they are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from . import serialization
from .model import JobRecord, JobState

#: The record's times, each shown as an aware UTC datetime.
TIMES = ("created_at", "eta", "started_at", "finished_at", "expires_at", "lease_until")


#: The times of an entry of ``history``.
HISTORY_TIMES = ("started_at", "finished_at")


def utc(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)


def _with_times(entry: dict[str, Any]) -> dict[str, Any]:
    times = {name: entry.get(name) for name in HISTORY_TIMES}
    return {**entry, **{n: utc(v) if isinstance(v, (int, float)) else v for n, v in times.items()}}


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


@dataclass(frozen=True)
class JobInfo:
    """One job's stored record, decoded. Times are aware UTC datetimes (``None`` where
    unset). ``args``/``kwargs``/``result`` are ``None`` when ``undecoded`` says why
    (a pickled payload nobody here opted in to, or text that does not decode).
    ``history`` holds the errors of earlier attempts, oldest first: each with
    ``attempt``, ``state``, ``error``, ``started_at`` and ``finished_at`` (UTC datetimes;
    ``None`` for an attempt that ended ``retrying``, whose times are not kept)."""

    id: str
    event: str
    route: str
    state: JobState
    serializer: str
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    result: Any
    undecoded: str | None
    error: dict[str, Any] | None
    history: list[dict[str, Any]]
    attempts: int
    deliveries: int
    max_deliveries: int
    owner: str | None
    schedule: str | None
    parent: str | None
    timeout: float | None
    retry: dict[str, Any] | None
    result_ttl: float
    created_at: datetime | None
    eta: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime | None
    lease_until: datetime | None

    @classmethod
    def of(cls, record: JobRecord, *, accepts_pickle: bool = False) -> JobInfo:
        """The info of ``record``; pickled payloads and results are decoded only with
        ``accepts_pickle`` (never for a record whose sender nobody here trusts)."""
        args: list[Any] | None = None
        kwargs: dict[str, Any] | None = None
        result: Any = None
        undecoded = None
        if record.serializer == "pickle" and not accepts_pickle:
            undecoded = (
                "pickled: not decoded (neither the queue nor the event opted in to pickle here)"
            )
        else:
            try:
                args, kwargs = serialization.decode_call(record.serializer, record.payload)
                if record.result is not None:
                    result = serialization.decode(record.serializer, record.result)
            except Exception as exc:  # noqa: BLE001 - a stored text that does not decode is shown as such
                args = kwargs = result = None
                undecoded = f"does not decode with {record.serializer}: {type(exc).__name__}: {exc}"
        return cls(
            id=record.id,
            event=record.event,
            route=record.route,
            state=record.state,
            serializer=record.serializer,
            args=args,
            kwargs=kwargs,
            result=result,
            undecoded=undecoded,
            error=record.error,
            history=[_with_times(entry) for entry in record.history or ()],
            attempts=record.attempts,
            deliveries=record.deliveries,
            max_deliveries=record.max_deliveries,
            owner=record.owner,
            schedule=record.schedule,
            parent=record.parent,
            timeout=record.timeout,
            retry=record.retry,
            result_ttl=record.result_ttl,
            **{name: utc(getattr(record, name)) for name in TIMES},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data that ``json.dumps`` takes: times as ISO-8601 UTC text, the state as
        its string; a result JSON cannot hold is shown by its ``repr``."""
        data = asdict(self)
        data["state"] = str(self.state)
        for name in TIMES:
            data[name] = _iso(data[name])
        for entry in data["history"]:
            for name in HISTORY_TIMES:
                entry[name] = _iso(entry.get(name))
        for name in ("args", "kwargs", "result"):
            try:
                json.dumps(data[name])
            except (TypeError, ValueError):
                data[name] = repr(data[name])
        return data
