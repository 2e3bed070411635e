"""Python's garbage collector is paused while a run opens and collects again where its
work begins: in each worker process, in the in-process work, after the call."""

from __future__ import annotations

import gc
import textwrap
from pathlib import Path

import pytest

from etl.core import collector


def test_paused_holds_collections_off_until_resumed() -> None:
    # Given the collector on
    assert gc.isenabled()
    # When a stretch is paused, and resumed inside
    with collector.paused():
        during = gc.isenabled()
        with collector.paused():  # nested: changes nothing
            nested = gc.isenabled()
        after_nested = gc.isenabled()
        collector.resume()
        resumed = gc.isenabled()
    # Then it was off until resumed, and is on after
    assert (during, nested, after_nested, resumed, gc.isenabled()) == (False, False, False,
                                                                         True, True)


def test_leaving_paused_turns_collections_back_on_even_on_an_error() -> None:
    # Given a paused stretch that raises
    with pytest.raises(RuntimeError):
        with collector.paused():
            raise RuntimeError("boom")
    # Then the collector is on again
    assert gc.isenabled()


def test_a_collector_the_caller_turned_off_stays_off() -> None:
    # Given a caller that turned the collector off itself
    gc.disable()
    try:
        # When a stretch is paused and resumed
        with collector.paused():
            collector.resume()
        # Then it is still off: the caller's choice
        assert not gc.isenabled()
    finally:
        gc.enable()


PIPES = """
    import gc
    from dataclasses import dataclass
    from etl import FileSource, ParquetSink, Pipeline
    from shards import HashShards
    from stages.base import StageResult

    @dataclass
    class NoteCollector:
        name = "note_collector"
        def apply(self, frame):
            with open("collector.txt", "a") as out:
                out.write(f"{gc.isenabled()}\\n")
            return StageResult(kept=frame)

    orders = Pipeline(name="orders", source=FileSource("orders.csv"), stages=[NoteCollector()],
                      sink=ParquetSink("out/orders"), key=["order_id"],
                      shards=HashShards(["order_id"], 4))
"""


@pytest.mark.parametrize("processes", [1, 2])
def test_the_work_of_a_run_collects_garbage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            processes: int) -> None:
    # Given a pipeline whose stage notes whether the collector is on where it runs
    (tmp_path / "orders.csv").write_text(
        "order_id,sku\n" + "".join(f"{i},s{i % 5}\n" for i in range(400)))
    (tmp_path / "notepipes.py").write_text(textwrap.dedent(PIPES))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import etl

    # When it runs in this process or in forked worker processes
    outcome = etl.run("notepipes:orders", fresh=True, processes=processes)
    # Then every batch was cleaned with the collector on, and it is on after the call
    assert outcome.completed and outcome.rows_loaded == 400
    notes = (tmp_path / "collector.txt").read_text().split()
    assert notes and set(notes) == {"True"}
    assert gc.isenabled()
