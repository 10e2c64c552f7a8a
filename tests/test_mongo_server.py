"""The mongo_server fixture: a real server over a socket, with the operations a queue needs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pymongo
import pytest
from pymongo.collection import Collection
from pymongo.database import Database

from .servers import ExternalMongo, MongoServer
from .waiting import wait_until


@pytest.fixture
def collection(mongo_server: MongoServer | ExternalMongo) -> Iterator[Collection]:
    """A collection of this test's own in the URL's database, dropped afterwards."""
    client: pymongo.MongoClient = pymongo.MongoClient(
        mongo_server.url, serverSelectionTimeoutMS=10_000, timeoutMS=15_000
    )
    database: Database = client.get_default_database("skunkqueue_test")
    coll = database[f"jobs_{uuid.uuid4().hex}"]
    try:
        yield coll
    finally:
        coll.drop()
        client.close()


def test_insert_and_find_one_and_update(collection: Collection) -> None:
    collection.insert_one({"_id": "job-1", "state": "ready", "attempts": 0})

    claimed = collection.find_one_and_update(
        {"_id": "job-1", "state": "ready"},
        {"$set": {"state": "running"}, "$inc": {"attempts": 1}},
        return_document=pymongo.ReturnDocument.AFTER,
    )
    assert claimed == {"_id": "job-1", "state": "running", "attempts": 1}

    # The claim's filter no longer matches: a second claimer gets nothing.
    again = collection.find_one_and_update(
        {"_id": "job-1", "state": "ready"}, {"$set": {"state": "running"}}
    )
    assert again is None
    assert collection.find_one({"_id": "job-1"}) == claimed


def test_change_stream_sees_insert(collection: Collection) -> None:
    with collection.watch(max_await_time_ms=200) as stream:
        collection.insert_one({"_id": "job-2", "state": "ready"})
        change = wait_until(stream.try_next, timeout=15.0, what="the insert on the change stream")
    assert change["operationType"] == "insert"
    assert change["documentKey"] == {"_id": "job-2"}
    assert change["fullDocument"] == {"_id": "job-2", "state": "ready"}
