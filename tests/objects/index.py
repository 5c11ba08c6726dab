"""Reading the object documents back from the index and shaping them like the truth
(``tests/objects/truth.py``), and the queries as Kibana sends them."""

from __future__ import annotations

import importlib.util
import time
from datetime import UTC, datetime

from tests.objects import corpus, truth
from tests.pipeline.processes import Service, service_env

ITEM = "tests.objects.app.Item"
#: Whether the object model (esindexer.objects) is in this tree: the e2e tests skip without it.
MODEL = importlib.util.find_spec("esindexer.objects") is not None


def start_service(db_dsn: str, es_url: str, es_prefix: str, tmp_path, name: str = "service",
                  **settings: str) -> Service:
    """``esindexer run`` with ``ESINDEXER_DOCUMENTS=objects`` (and ``settings``: ``crash_guard_after="0"``),
    logging to ``tmp_path/<name>.log``."""
    return Service(service_env(db_dsn, es_url, es_prefix, DOCUMENTS="objects", **settings), tmp_path / f"{name}.log")


def wait_ready(service: Service, timeout: float = 60.0) -> None:
    """Until the service answers ``/readyz`` with 200 (it follows the database)."""
    deadline = time.monotonic() + timeout
    while (answer := service.get("/readyz")) is None or answer[0] != 200:
        if time.monotonic() > deadline or service.proc.poll() is not None:
            raise AssertionError(f"the service is not ready ({answer}):\n{service.log()[-2000:]}")
        time.sleep(0.2)


def caught_up_objects(db_dsn: str, client_id: str = "esindexer") -> bool:
    """The saved progress is at the newest tid (what ``esindexer status`` calls caught up)."""
    from tests.pipeline.processes import caught_up

    return caught_up(db_dsn, [client_id])


def documents(es, prefix: str, refresh: bool = True, pattern: str | None = None) -> dict[int, dict]:
    """Every document under the test's prefix (all its indices; or ``pattern``, an alias):
    ``zoid -> _source`` plus ``_index``; fails if one zoid has two documents."""
    pattern = pattern or f"{prefix}*"
    if refresh:
        es.indices.refresh(index=pattern, allow_no_indices=True, ignore_unavailable=True)
    found: dict[int, dict] = {}
    answer = es.search(index=pattern, size=10_000, query={"match_all": {}}, allow_no_indices=True,
                       ignore_unavailable=True)
    for hit in answer["hits"]["hits"]:
        zoid = int(hit["_id"])
        assert zoid not in found, f"two documents for {zoid}: {found[zoid]['_index']} and {hit['_index']}"
        found[zoid] = {**hit["_source"], "_index": hit["_index"]}
    assert answer["hits"]["total"]["value"] < 10_000, "more documents than this helper reads"
    return found


def review_state(source: dict) -> str | None:
    """The current workflow state (the last history entry's) wherever the typed model put it."""
    state = source.get("state") or {}
    for key, value in state.items():
        if key.endswith("app_workflow.review_state"):
            return value[-1] if isinstance(value, list) else value
    entries = _find(source.get("more") or {}, "app_workflow")
    if isinstance(entries, list) and entries and isinstance(entries[-1], dict):
        return entries[-1].get("review_state")
    return None


def _find(tree, key):
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key or k.endswith("." + key):
                return v
            found = _find(v, key)
            if found is not None:
                return found
    return None


def tid_time(tid: int) -> datetime:
    """The commit time a tid stands for (ZODB's TimeStamp), UTC."""
    from ZODB.TimeStamp import TimeStamp
    from ZODB.utils import p64

    return datetime.fromtimestamp(TimeStamp(p64(tid)).timeTime(), UTC)


def committed_at_ok(src: dict) -> bool:
    """``committed_at`` is the time of the object's last change, its parts' included: of the
    newest of ``tid`` and ``parts_tid`` (to the millisecond)."""
    if src.get("tid") is None:
        return True
    newest = max(src["tid"], src.get("parts_tid") or 0)
    stamped = datetime.fromisoformat(src["committed_at"].replace("Z", "+00:00"))
    return abs((stamped - tid_time(newest)).total_seconds()) < 0.001


def expected(found: dict[int, truth.Obj]) -> dict[int, dict]:
    """What each object document must say, from the truth."""
    out = {}
    for z, o in found.items():
        want = {"class": o.cls, "path": o.path, "parent": o.parent, "depth": o.depth, "ancestors": list(o.ancestors),
                "committed_at_ok": True}
        if o.depth:  # a tool named by its container: the key it is held under
            want["name"] = o.name
        if o.cls == ITEM:
            want.update(title=o.title, review_state=o.review_state, body_in_text=True, known_parts=True, tid=o.tid,
                        parts_tid=o.parts_tid)
        out[z] = want
    return out


def actual(docs: dict[int, dict], found: dict[int, truth.Obj]) -> dict[int, dict]:
    """The same fields read from the documents (for items, whether the body's words are in
    ``text`` and the truth's known parts in ``parts``)."""
    out = {}
    for z, src in docs.items():
        have = {k: src.get(k) for k in ("class", "path", "parent", "depth", "name")}
        have["ancestors"] = list(src.get("ancestors") or [])
        have["committed_at_ok"] = committed_at_ok(src)
        if src.get("class") == ITEM:
            have["tid"], have["parts_tid"] = src.get("tid"), src.get("parts_tid")
            have["title"] = (src.get("state") or {}).get("title")
            have["review_state"] = review_state(src)
            obj = found.get(z)
            words = truth.body_words(src.get("text") or "")
            have["body_in_text"] = obj is not None and obj.words <= words
            have["known_parts"] = obj is not None and obj.parts <= set(src.get("parts") or [])
        out[z] = have
    return out


def settle(es, prefix: str, read_truth, timeout: float = 120.0, interval: float = 1.0) -> float:
    """Wait until the index equals the truth (read again each round, for writes still
    arriving); return the seconds it took, or fail with the last diff."""
    from elasticsearch import ApiError

    started = time.monotonic()
    while True:
        found = read_truth()
        try:
            docs = documents(es, prefix)
        except ApiError as exc:  # 503 while a new index's shard starts
            if exc.meta.status != 503:
                raise
            docs = {}
        diff = truth.compare(expected(found), actual(docs, found))
        if not diff:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the index did not become equal to the truth in {timeout:.0f} s:\n  "
                                 + "\n  ".join(diff))
        time.sleep(interval)


# -- queries as Kibana sends them ------------------------------------------------------------

def kql_phrase(field: str, value: str) -> dict:
    """KQL ``field : "value"`` as Kibana translates it."""
    return {"bool": {"should": [{"match_phrase": {field: value}}], "minimum_should_match": 1}}


def kql_match(field: str, value: str) -> dict:
    """KQL ``field : value`` (unquoted)."""
    return {"bool": {"should": [{"match": {field: value}}], "minimum_should_match": 1}}


def kql_range(field: str, gte: str, lt: str) -> dict:
    """KQL ``field >= gte and field < lt``."""
    return {"bool": {"filter": [
        {"bool": {"should": [{"range": {field: {"gte": gte}}}], "minimum_should_match": 1}},
        {"bool": {"should": [{"range": {field: {"lt": lt}}}], "minimum_should_match": 1}}]}}


def kql_or(*queries: dict) -> dict:
    return {"bool": {"should": list(queries), "minimum_should_match": 1}}


def lucene(text: str) -> dict:
    """The Lucene syntax of Kibana's query bar."""
    return {"query_string": {"query": text, "analyze_wildcard": True}}


def hits(es, prefix: str, query: dict) -> set[int]:
    """The zoids a query finds over the data view ``<prefix>*`` (Kibana's filter context)."""
    answer = es.search(index=f"{prefix}*", size=10_000, query={"bool": {"filter": [query]}}, source=False,
                       track_total_hits=True)
    return {int(h["_id"]) for h in answer["hits"]["hits"]}


def visible(es, prefix: str, zoids) -> set[int]:
    """Which of ``zoids`` a search finds now (no refresh: what a user sees)."""
    answer = es.search(index=f"{prefix}*", size=len(zoids) or 1, query={"ids": {"values": [str(z) for z in zoids]}},
                       source=False)
    return {int(h["_id"]) for h in answer["hits"]["hits"]}


def wait_gone(es, prefix: str, zoids, since: float, timeout: float = 30.0) -> float:
    """Seconds from ``since`` (a ``time.monotonic()``) until none of ``zoids`` is found."""
    while visible(es, prefix, zoids):
        if time.monotonic() - since > timeout:
            raise AssertionError(f"still found after {timeout} s: {sorted(visible(es, prefix, zoids))[:10]}")
        time.sleep(0.05)
    return time.monotonic() - since


def wait_found(es, prefix: str, query: dict, expected: set[int], since: float, timeout: float = 30.0) -> float:
    while not expected <= hits(es, prefix, query):
        if time.monotonic() - since > timeout:
            raise AssertionError(f"not found after {timeout} s: {sorted(expected - hits(es, prefix, query))[:10]}")
        time.sleep(0.05)
    return time.monotonic() - since


def check_queries(es, prefix: str, found: dict[int, truth.Obj]) -> None:
    """Each query as Kibana sends it returns exactly the truth's objects."""
    under = {z for z, o in found.items() if "/f1/sub" in o.ancestors}
    itself = {z for z, o in found.items() if o.path == "/f1/sub"}
    march = {z for z, o in found.items() if o.created and datetime(2024, 3, 1, tzinfo=UTC) <= o.created
             < datetime(2024, 4, 1, tzinfo=UTC)}
    rare = {z for z, o in found.items() if corpus.RARE_WORD in o.words}
    sample = next(o for o in found.values() if o.cls == ITEM)
    titled = {z for z, o in found.items() if o.title == sample.title}
    top = {z for z, o in found.items() if o.depth <= 1}
    pending = {z for z, o in found.items() if "pending" in o.states}
    urgent = {z for z, o in found.items() if "urgent" in o.tags}
    assert len(under) > 20 and len(march) > 5 and len(rare) > 3, (len(under), len(march), len(rare))
    assert len(pending) > 3 and len(urgent) > 10, (len(pending), len(urgent))
    cases = {
        'ancestors : "/f1/sub"': (kql_phrase("ancestors", "/f1/sub"), under),
        "prefix path /f1/sub/": ({"prefix": {"path": "/f1/sub/"}}, under),
        "lucene path:\\/f1\\/sub\\/*": (lucene("path:\\/f1\\/sub\\/*"), under),
        'path : "/f1/sub" or ancestors : "/f1/sub"': (
            kql_or(kql_phrase("path", "/f1/sub"), kql_phrase("ancestors", "/f1/sub")), under | itself),
        'state.created >= "2024-03-01" and < "2024-04-01"': (
            kql_range("state.created", "2024-03-01T00:00:00Z", "2024-04-01T00:00:00Z"), march),
        f"text : {corpus.RARE_WORD}": (kql_match("text", corpus.RARE_WORD), rare),
        f"lucene text:{corpus.RARE_WORD}": (lucene(f"text:{corpus.RARE_WORD}"), rare),
        f'state.title.keyword : "{sample.title}"': (kql_phrase("state.title.keyword", sample.title), titled),
        f"state.body._holder.raw : {corpus.RARE_WORD}": (kql_match("state.body._holder.raw", corpus.RARE_WORD), rare),
        "state.history.data.app_workflow.review_state : pending": (
            kql_match("state.history.data.app_workflow.review_state", "pending"), pending),
        "state.tags : urgent": (kql_match("state.tags", "urgent"), urgent),
        "depth <= 1": ({"bool": {"should": [{"range": {"depth": {"lte": 1}}}], "minimum_should_match": 1}}, top),
    }
    wrong = []
    for what, (query, want) in cases.items():
        got = hits(es, prefix, query)
        if got != want:
            wrong.append(f"{what}: {len(got)} hits, expected {len(want)}; missing {sorted(want - got)[:5]}, "
                         f"unexpected {sorted(got - want)[:5]}")
    assert not wrong, "Kibana queries differ from the truth:\n  " + "\n  ".join(wrong)


def check_ignored(es, prefix: str, expected_items: int) -> None:
    """No Item document has unmapped (ignored) fields, though the infrastructure area is indexed."""
    def count(*filters):
        return es.count(index=f"{prefix}*", query={"bool": {"filter": list(filters)}})["count"]

    items = count({"term": {"class": ITEM}})
    ignored_items = count({"term": {"class": ITEM}}, {"exists": {"field": "_ignored"}})
    ignored_all = count({"exists": {"field": "_ignored"}})
    print(f"documents with _ignored: {ignored_items} of {items} items, {ignored_all} in all")
    settings = count({"term": {"class": "tests.objects.app.Settings"}})
    assert (items, settings) == (expected_items, 1)
    assert ignored_items == 0
