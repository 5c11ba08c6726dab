"""Bulk requests against a real Elasticsearch node: per-item outcomes, versions, retries."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
from elasticsearch import Elasticsearch

from esindexer.config import load_settings
from esindexer.documents import Action, DocumentBuilder
from esindexer.errors import Abandoned, RetryableItems
from esindexer.es.admin import ensure_indices
from esindexer.es.bulk import BulkSender, iter_lines
from esindexer.pipeline.reader import RequestBuffer as BulkBuffer
from tests.support import wait_for

TID = 291972294502024669


@pytest.fixture
def setup(es, es_prefix):
    prefix = es_prefix.rstrip("-")
    settings = load_settings(env={"ESINDEXER_PG_DSN": "postgresql://x@localhost/x",
                                  "ESINDEXER_INDEX_PREFIX": prefix, "ESINDEXER_INDEX_REPLICAS": "0"})
    ensure_indices(es, settings)
    return settings, DocumentBuilder(settings), prefix


def _get(es, index, zoid):
    return es.get(index=index, id=str(zoid))["_source"]


def test_older_write_never_overwrites_newer(es, setup):
    settings, builder, prefix = setup
    newer = builder.index_action(TID + 10, 1, "a.A", '{"v": "new"}')
    older = builder.index_action(TID, 1, "a.A", '{"v": "old"}')
    sender = BulkSender(es)
    assert sender.send([newer]).done_total == 1
    replay = sender.send([older, newer])  # a replay after a crash: 409 + same-version rewrite
    assert replay.done_total == 2 and not replay.rejected
    assert _get(es, builder.indices[0], 1)["state"] == {"v": "new"}


def test_delete_of_missing_document_and_versioned_delete(es, setup):
    settings, builder, prefix = setup
    sender = BulkSender(es)
    assert sender.send(builder.delete_actions(TID, 99)).done == {"delete": 1}  # 404: nothing to delete
    sender.send([builder.index_action(TID, 2, "a.A", '{"v": 1}')])
    sender.send(builder.delete_actions(TID, 2, version=TID + 1))
    # a write older than the delete, arriving late, must not resurrect the document
    late = sender.send([builder.index_action(TID, 2, "a.A", '{"v": 1}')])
    assert late.done_total == 1
    es.indices.refresh(index=prefix)
    assert es.count(index=prefix)["count"] == 0


def test_rejected_item_does_not_stop_its_neighbours(es, setup):
    settings, builder, prefix = setup
    good1 = builder.index_action(TID, 10, "a.A", '{"v": 1}')
    bad = Action("index", builder.indices[0], 11, TID, TID, "a.A",
                 orjson.dumps({"class": "a.A", "zoid": 11, "unexpected_top_level": 1}))
    good2 = builder.index_action(TID, 12, "a.A", '{"v": 2}')
    result = BulkSender(es).send([good1, bad, good2])
    assert result.done == {"index": 2}
    assert [r.action.zoid for r in result.rejected] == [11]
    assert len(result.rejected) == 1
    assert result.rejected[0].status == 400
    assert "strict_dynamic_mapping_exception" in result.rejected[0].reason


@pytest.mark.parametrize("block", ["closed", "write_block", "flood_stage"])
def test_a_closed_or_write_blocked_index_is_waited_for_not_dead_lettered(es, setup, block):
    settings, builder, prefix = setup
    index = builder.indices[0]
    sender = BulkSender(es)
    sender.send([builder.index_action(TID, 1, "a.A", '{"v": 0}')])
    # The flood-stage disk watermark sets read_only_allow_delete, whose refusal is an
    # item 429 (TOO_MANY_REQUESTS/12): it is a block all the same, not load.
    setting = "index.blocks.read_only_allow_delete" if block == "flood_stage" else "index.blocks.write"
    if block == "closed":
        es.indices.close(index=index)
    else:
        es.indices.put_settings(index=index, settings={setting: True})
    reasons: list[str] = []
    messages: list[str] = []

    def on_retry(reason: str, exc: BaseException) -> None:
        reasons.append(reason)
        messages.append(str(exc))

    blocked = BulkSender(es, retry_max_seconds=60 if block == "flood_stage" else 0.2, on_retry=on_retry)
    outcome: dict = {}
    actions = [builder.index_action(TID + 1, zoid, "a.A", '{"v": 1}') for zoid in (1, 2, 3)]
    worker = threading.Thread(target=lambda: outcome.setdefault("result", blocked.send(actions)))
    worker.start()
    wait_for(lambda: len(reasons) >= 2, timeout=30, message="retries while the index is blocked")
    assert "result" not in outcome  # still waiting: nothing dead-lettered meanwhile
    if block == "closed":
        es.indices.open(index=index, wait_for_active_shards=1)
    else:
        es.indices.put_settings(index=index, settings={setting: None})
    worker.join(30)
    result = outcome["result"]
    assert result.done == {"index": 3} and not result.rejected
    assert set(reasons) == {"item_index_closed" if block == "closed" else "item_index_blocked"}
    # the warning says which index and what to do about it
    assert f"index {index} unwritable: " + ("open it" if block == "closed" else "lift the block") in messages[0]
    es.indices.refresh(index=index)
    assert es.count(index=index)["count"] == 3


def test_unreachable_elasticsearch_is_retried_until_stopped():
    dead = Elasticsearch("http://127.0.0.1:9", request_timeout=2, max_retries=0)
    stop = threading.Event()
    reasons: list[str] = []
    sender = BulkSender(dead, retry_max_seconds=0.2, stop=stop, on_retry=lambda r, e: reasons.append(r))
    action = Action("delete", "x", 1, TID, TID)
    timer = threading.Timer(1.5, stop.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(Abandoned):
        sender.send([action])
    timer.cancel()
    assert len(reasons) >= 2 and set(reasons) == {"es_unreachable"}
    assert time.monotonic() - started < 10


def test_retry_attempts_limit_gives_up():
    dead = Elasticsearch("http://127.0.0.1:9", request_timeout=2, max_retries=0)
    sender = BulkSender(dead, retry_max_seconds=0.05, retry_attempts=2)
    with pytest.raises(Exception) as info:
        sender.send([Action("delete", "x", 1, TID, TID)])
    assert "Connection" in type(info.value).__name__ or "connect" in str(info.value).lower()


def _fill(buffer: BulkBuffer, actions: list[Action]) -> list[list[Action]]:
    requests = [buffer.take() for action in actions if buffer.add(action)]
    return requests + ([buffer.take()] if buffer else [])


def test_bulk_requests_bounded_by_count_and_bytes():
    small = [Action("index", "i", n, TID, TID, "a", b"x" * 100) for n in range(25)]
    assert [len(r) for r in _fill(BulkBuffer(max_docs=10, max_bytes=10**9), small)] == [10, 10, 5]
    by_bytes = _fill(BulkBuffer(max_docs=1000, max_bytes=1000), small)
    assert all(sum(a.size() for a in r[:-1]) < 1000 for r in by_bytes)  # the last one crossed the bound
    huge = [Action("index", "i", 1, TID, TID, "a", b"x" * 5000)]
    assert _fill(BulkBuffer(max_docs=10, max_bytes=1000), huge) == [huge]


def test_action_size_is_the_bytes_it_adds_to_a_bulk_body():
    for action in (Action("index", "zodb-objects", 123456, TID, TID, "a.B", b'{"x":1}'),
                   Action("delete", "p-content", 7, TID, TID + 1)):
        body = b"\n".join(iter_lines([action])) + b"\n"
        assert action.size() == len(body)


# --- against the constrained node (tests/es_nodes.py): real 413 and real 429 ---

from tests.es_nodes import MAX_CONTENT_BYTES  # noqa: E402


def _constrained_setup(es_constrained, shards: int = 1):
    settings = load_settings(env={"ESINDEXER_PG_DSN": "postgresql://x@localhost/x",
                                  "ESINDEXER_INDEX_PREFIX": "small", "ESINDEXER_INDEX_REPLICAS": "0",
                                  "ESINDEXER_INDEX_SHARDS": str(shards)})
    ensure_indices(es_constrained, settings)
    return DocumentBuilder(settings)


def test_request_too_large_is_split_and_only_the_oversized_document_is_rejected(es_constrained):
    builder = _constrained_setup(es_constrained)
    filler = "x" * 400
    small = [builder.index_action(TID, zoid, "a.A", orjson.dumps({"text": filler}).decode())
             for zoid in range(1, 501)]
    huge = builder.index_action(TID, 1000, "a.A", orjson.dumps({"text": "y" * MAX_CONTENT_BYTES}).decode())
    actions = small[:250] + [huge] + small[250:]
    assert sum(a.size() for a in actions) > 4 * MAX_CONTENT_BYTES  # one request would be refused
    outcomes: list[str] = []
    sender = BulkSender(es_constrained, on_request=lambda outcome, seconds: outcomes.append(outcome))

    result = sender.send(actions)

    assert result.done == {"index": 500}
    assert [(r.action.zoid, r.status) for r in result.rejected] == [(1000, 413)]
    assert outcomes.count("failed") >= 2  # the whole request, then (at least) the huge one alone
    assert sender.learned_max_bytes is not None and sender.learned_max_bytes >= MAX_CONTENT_BYTES // 2
    es_constrained.indices.refresh(index=builder.indices[0])
    assert es_constrained.count(index=builder.indices[0])["count"] == 500

    # It remembers: the same amount again is cut to size up front, with no refusal at all.
    outcomes.clear()
    again = sender.send([builder.index_action(TID + 1, a.zoid, "a.A", a.source.decode()) for a in small])
    assert again.done == {"index": 500} and not again.rejected
    assert "failed" not in outcomes  # (a 429 from the one write thread is "retried", not refused)
    assert again.requests > 1


def test_rejected_execution_429_is_retried_item_by_item_until_all_are_indexed(es_constrained):
    builder = _constrained_setup(es_constrained, shards=8)
    reasons: list[str] = []
    lock = threading.Lock()

    def on_retry(reason: str, exc: BaseException) -> None:
        with lock:
            reasons.append(reason)

    def send(first: int) -> tuple[int, int]:
        actions = [builder.index_action(TID, zoid, "a.A", f'{{"n": {zoid}}}')
                   for zoid in range(first, first + 80)]  # 80 small items: well under 64 KiB
        result = BulkSender(es_constrained, retry_max_seconds=0.2, on_retry=on_retry).send(actions)
        return result.done_total, len(result.rejected)

    sent = 0
    # One write thread with a queue of one: concurrent 8-shard bulks are rejected per item.
    # A round almost always meets a 429; a few rounds make sure of it.
    for _ in range(5):
        threads_results: list[tuple[int, int]] = []
        workers = [threading.Thread(target=lambda k=k: threads_results.append(send(sent + k * 80)))
                   for k in range(6)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert threads_results == [(80, 0)] * 6  # everything settled, nothing rejected
        sent += 6 * 80
        if "item_429" in reasons:
            break
    assert "item_429" in reasons, reasons
    assert set(reasons) <= {"item_429", "es_429"}
    es_constrained.indices.refresh(index=builder.indices[0])
    assert es_constrained.count(index=builder.indices[0])["count"] == sent


def test_a_deleted_index_without_auto_creation_is_waited_for_with_advice(es_constrained):
    builder = _constrained_setup(es_constrained)
    index = builder.indices[0]
    es_constrained.indices.delete(index=index)
    es_constrained.cluster.put_settings(persistent={"action.auto_create_index": "false"})
    try:
        messages: list[tuple[str, str]] = []
        sender = BulkSender(es_constrained, retry_max_seconds=0.2,
                            on_retry=lambda reason, exc: messages.append((reason, str(exc))))
        outcome: dict = {}
        worker = threading.Thread(target=lambda: outcome.setdefault(
            "result", sender.send([builder.index_action(TID, zoid, "a.A", '{"v": 1}') for zoid in (1, 2)])))
        worker.start()
        wait_for(lambda: any(reason == "item_index_missing" for reason, _ in messages), timeout=30,
                 message="a retry because the index is missing")
        assert "result" not in outcome
        assert any("restart esindexer to create it again" in text for _, text in messages)
        _constrained_setup(es_constrained)  # what a restart does: template and indices again
        worker.join(30)
        assert outcome["result"].done == {"index": 2} and not outcome["result"].rejected
    finally:
        es_constrained.cluster.put_settings(persistent={"action.auto_create_index": None})


def test_items_waiting_for_their_index_are_rechecked_within_seconds_not_the_load_backoff():
    from tenacity import RetryCallState, Retrying

    from esindexer.es.bulk import INDEX_CONDITION_RECHECK_SECONDS

    sender = BulkSender(None, retry_max_seconds=60)

    def wait_after(exc: BaseException, attempt: int) -> float:
        state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
        state.attempt_number = attempt
        state.set_exception((type(exc), exc, None))
        return max(sender._wait(state) for _ in range(50))  # jitter: the largest of many

    blocked = RetryableItems(3, "index_blocked", index_conditions_only=True)
    loaded = RetryableItems(3, "429", index_conditions_only=False)
    assert wait_after(blocked, 12) <= INDEX_CONDITION_RECHECK_SECONDS
    assert wait_after(loaded, 12) > INDEX_CONDITION_RECHECK_SECONDS  # load keeps its long back-off
