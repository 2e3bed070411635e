"""MongoSink merges by key exactly as the pandas reference does, whatever the load order,
however often a batch is delivered (mongomock, or a real server with ETL_TEST_MONGO_URL)."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings

from etl.sinks.mongo import MongoSink
from tests.merge_reference import KEY, Load, held, histories, reference


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(loads=histories())
def test_a_mongo_merge_equals_the_pandas_reference(mongo_client, loads: list[Load]) -> None:  # type: ignore[no-untyped-def]
    # Given an empty collection merged on id
    database = f"etl_merge_{uuid.uuid4().hex[:10]}"
    sink = MongoSink("mongodb://db", collection="rows", key=KEY, client=mongo_client,
                     database=database)
    try:
        # When batches of several runs load in a random order, some of them twice
        for load in loads:
            written = sink.write_batch(load.frame(), run_id=load.run_id, shard=load.shard,
                                       batch=load.batch)
            assert written == len(load.rows)
        # Then the collection holds exactly the last row per key in sequence order
        got = held(sink.read_all())
        want = reference(loads)
        assert got.to_dict("records") == want.to_dict("records")
    finally:
        mongo_client.drop_database(database)
