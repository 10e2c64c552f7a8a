"""Payload codecs. JSON is the default; pickle only when a user opts in.

A worker decodes a payload with the serializer its own code registered for the event,
never with whatever the record claims, so a forged record cannot smuggle in a pickle.
"""

from __future__ import annotations

import base64
import json
import pickle
from typing import Any

from .errors import SerializationError

SERIALIZERS = ("json", "pickle")

# One encoder built once: json.dumps with options builds a new JSONEncoder per call,
# which costs more than encoding a small call's arguments.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(serializer: str, value: Any, what: str) -> str:
    if serializer == "json":
        try:
            return _JSON.encode(value)
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"{what} cannot be serialized as JSON ({exc}); pass JSON-compatible values, "
                f"or opt in to pickle with serializer='pickle'"
            ) from exc
    if serializer == "pickle":
        try:
            return base64.b64encode(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).decode()
        except Exception as exc:
            raise SerializationError(f"{what} cannot be pickled: {exc}") from exc
    raise SerializationError(f"unknown serializer {serializer!r}")


def decode(serializer: str, text: str) -> Any:
    if serializer == "json":
        return json.loads(text)
    if serializer == "pickle":
        return pickle.loads(base64.b64decode(text))
    raise SerializationError(f"unknown serializer {serializer!r}")


def encode_call(serializer: str, args: tuple | list, kwargs: dict | None, what: str) -> str:
    if kwargs is not None and not isinstance(kwargs, dict):
        raise SerializationError(f"{what}: kwargs must be a dict, not {type(kwargs).__name__}")
    if kwargs and not all(isinstance(k, str) for k in kwargs):
        raise SerializationError(f"{what}: keyword argument names must be strings")
    return encode(serializer, [list(args), kwargs or {}], f"arguments of {what}")


def decode_call(serializer: str, text: str) -> tuple[list, dict]:
    args, kwargs = decode(serializer, text)
    return list(args), dict(kwargs)
