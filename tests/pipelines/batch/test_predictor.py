"""`pipelines.batch.predictor.LabelPredictor` called directly (no Ray): rows join the actor's continuous-batching
scheduler, concurrent calls share it, answers are those of each row run alone, and a failing row fails by itself."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from pipelines.batch.config import LabelJob
from pipelines.batch.decode import decode_row
from pipelines.batch.predictor import CrashJournal, LabelPredictor, _Gate
from restore.zoo.world import scene_image


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for i in range(6):
        scene_image(i, 64).save(root / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def predictor(files):
    job = LabelJob(kind="images", input=str(files), output=str(files / "out"), model="random:llava-tiny",
                   method="divprune", budget=8, batch_size=2, max_new_tokens=6)
    p = LabelPredictor(job)
    yield p
    p.scheduler.close()


def rows_of(files, ids):
    return [{"id": str(i), "uri": str(files / f"{i}.png"), "question": None} for i in ids]


def alone(predictor, row):
    decoded = decode_row(row, predictor.job)
    decoded["prompt"] = predictor.job.default_prompt()
    return predictor.engine.generate([predictor._request(decoded)], generation=predictor.generation)[0].text


def answers(table: pa.Table) -> dict[str, str | None]:
    return {r["id"]: r["answer"] for r in table.to_pylist()}


def test_rows_through_the_running_batch_get_their_alone_answers(predictor, files):
    rows = rows_of(files, range(5))  # more rows than running slots: finished slots are refilled
    out = predictor(pa.Table.from_pylist(rows))
    assert out.column("error").to_pylist() == [None] * 5
    assert answers(out) == {r["id"]: alone(predictor, r) for r in rows}


def test_concurrent_calls_share_the_scheduler(predictor, files):
    batches = [rows_of(files, [0, 1, 2]), rows_of(files, [3, 4, 5])]
    outs: list[pa.Table | None] = [None, None]

    def call(i):
        outs[i] = predictor(pa.Table.from_pylist(batches[i]))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for batch, out in zip(batches, outs, strict=True):
        assert answers(out) == {r["id"]: alone(predictor, r) for r in batch}
    assert predictor.journal.state["inflight"] == []


def test_a_failing_row_fails_alone_and_its_batch_mates_are_labeled(predictor, files, monkeypatch):
    rows = rows_of(files, range(4))
    expected = {r["id"]: alone(predictor, r) for r in rows}
    real = predictor.engine._prefill_reduced
    singles = []

    def fails_in_groups_and_for_the_third_row_alone(seqs, *args):
        if len(seqs) > 1:  # a failing group prefill fails all its members
            raise RuntimeError("boom")
        singles.append(len(singles))
        if len(singles) == 3:
            raise RuntimeError("boom")
        return real(seqs, *args)

    monkeypatch.setattr(predictor.engine, "_prefill_reduced", fails_in_groups_and_for_the_third_row_alone)
    # Without its thread the scheduler is driven by the waiting call: all four rows are queued before the
    # first step, so it prefills them in groups of two (prefill_group = batch_size), which fail.
    predictor.scheduler.close()
    try:
        out = {r["id"]: r for r in predictor(pa.Table.from_pylist(rows)).to_pylist()}
    finally:
        predictor.scheduler.start()
    assert len(singles) == 4  # each row ran again alone, in order
    assert out["2"]["answer"] is None
    assert out["2"]["error"] == f"{rows[2]['uri']}: generation failed: RuntimeError: boom"
    assert {i: r["answer"] for i, r in out.items() if i != "2"} == {i: a for i, a in expected.items() if i != "2"}


def test_journal_keeps_the_ids_of_every_call_in_flight():
    journal = CrashJournal()
    journal.begin(["a", "b"])
    journal.begin(["c"])
    journal.end(["a", "b"])
    assert journal.state["inflight"] == ["c"]
    journal.end(["c"])
    assert journal.state["inflight"] == []


def test_gate_exclusive_waits_for_shared_calls_and_holds_new_ones():
    gate, events = _Gate(), []
    inside, release = threading.Event(), threading.Event()

    def shared_call():
        with gate.shared():
            inside.set()
            release.wait(5)
            events.append("shared done")

    def exclusive_call():
        with gate.exclusive():
            events.append("exclusive")

    t1 = threading.Thread(target=shared_call)
    t1.start()
    inside.wait(5)
    t2 = threading.Thread(target=exclusive_call)
    t2.start()
    t2.join(0.2)
    assert events == []  # the exclusive call waits for the shared one
    release.set()
    t1.join(5)
    t2.join(5)
    assert events == ["shared done", "exclusive"]
