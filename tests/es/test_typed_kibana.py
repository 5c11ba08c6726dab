"""Plone-like and mixed ZODB content, indexed by the real service, searched as Kibana does.

Real ZODB + RelStorage content in both history modes: Dexterity-style items with Zope
``DateTime`` attributes and an inline workflow history, an object holding ``DateTime``
values in the pickled shapes of older DateTime releases, news items with naive and aware
``datetime``s, ratings as ints, floats and ``Decimal``s, an attribute that is a string in
one class and a number in another, a ``PersistentMapping`` with 5,000 keys and a
``PersistentList`` (both hold ``data``). The service indexes them with the defaults
(the typed model) and the shipped Plone transform; then the queries Kibana sends for
the KQL in docs/documents.md must return exactly the expected objects, ``_field_caps``
must report the types the model promises, and nothing may be dead-lettered.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import transaction
from DateTime import DateTime
from persistent import Persistent
from persistent.list import PersistentList
from persistent.mapping import PersistentMapping

from esindexer.errors import ExitCode, SetupError
from esindexer.es.admin import TYPED_FIELDS_LIMIT, ensure_indices
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from tests.indexing import dead_letters, make_settings
from tests.support import both_history_modes, run_esindexer


class Item(Persistent):
    """A Dexterity-like content item (attribute names as plone.dexterity stores them)."""

    def __init__(self, id: str, title: str, *, effective: Any, modified: Any, rating: Any,
                 state: str = "published", code: Any = "A-1"):
        self.portal_type = "Document"
        self.id = id
        self.title = title
        self.effective_date = effective
        self.expiration_date = None
        self.modification_date = modified
        self.creation_date = DateTime("2025/01/01 09:00 GMT+1")
        self.rating = rating
        self.code = code
        self.workflow_history = {"simple_publication_workflow": [
            {"action": None, "review_state": "private", "actor": "admin",
             "time": DateTime("2025/01/01 09:00 GMT+1")},
            {"action": "publish", "review_state": state, "actor": "admin",
             "time": DateTime("2025/02/01 09:00 GMT+1")},
        ]}


class OldDateTime:
    """Pickles as DateTime.DateTime.DateTime with an older DateTime release's state."""

    def __init__(self, state: Any):
        self.state = state

    def __reduce__(self) -> Any:
        import copyreg

        return copyreg._reconstructor, (DateTime, object, None), self.state


class Legacy(Persistent):
    """Content written by older DateTime releases: attribute dicts with _micros, or only _t."""

    def __init__(self, title: str, micros: int):
        self.title = title
        self.stamped = OldDateTime({"_micros": micros, "_tz": "GMT+2", "_timezone_naive": False})
        self.touched = OldDateTime({"_t": micros / 1e6, "_tz": "GMT+2"})


class News(Persistent):
    """Python datetimes: naive (= UTC) and aware."""

    def __init__(self, title: str, published: dt.datetime, code: Any):
        self.title = title
        self.published = published
        self.code = code  # a number here, a string in Item: one attribute, two kinds


def _content(root) -> dict[str, Persistent]:
    items = {
        "minutes": Item("minutes", "Minutes of June", effective=DateTime("2026/06/01 00:00 GMT"),
                        modified=DateTime("2026/06/15 10:00 GMT+2"), rating=3.5),
        "budget": Item("budget", "Budget 2026", effective=DateTime("2026/05/20 GMT"),
                       modified=DateTime("2026/05/31 23:00 GMT"), rating=2.5, state="private"),
        "agenda": Item("agenda", "Agenda for the meeting", effective=DateTime("2026/06/03 GMT"),
                       modified=DateTime("2026/07/01 08:00 GMT"), rating=Decimal("7.25")),
        "report": Item("report", "Yearly report with minutes", effective=DateTime("2026/07/10 GMT"),
                       modified=DateTime("2026/06/01 00:30 GMT+1"), rating=10),  # 2026-05-31T23:30Z
        "archive": Item("archive", "Archive", effective=DateTime("2025/12/24 GMT"),
                        modified=DateTime("2026/01/05 GMT"), rating=10.5, code=17),
        "naive": News("Naive news", dt.datetime(2026, 6, 1, 12, 0), code=4),
        "aware": News("Aware news", dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
                      code=5),
    }
    items["legacy"] = Legacy("Legacy dates", 1780309800500000)  # 2026-06-01T10:30:00.5Z
    big = PersistentMapping({f"key-{n}": {"n": n, "label": f"entry {n}"} for n in range(5000)})
    items["big"] = big
    items["list"] = PersistentList(["alpha", "beta"])
    for name, obj in items.items():
        root[name] = obj
    return items


def _ids(answer: dict[str, Any]) -> set[str]:
    return {h["_source"]["state"].get("id") or h["_source"]["state"]["title"] for h in answer["hits"]["hits"]}


@both_history_modes
def test_kibana_queries_on_typed_plone_like_content(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    root = conn.root()
    _content(root)
    transaction.commit()
    root["agenda"].title = "Agenda for the June meeting"  # a second state of one object
    transaction.commit()
    conn.close()
    settings = make_settings(db_dsn, es_url, es_prefix, transform="esindexer.transforms.plone.transform")
    assert settings.state_mapping == "typed"  # the default
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    assert dead_letters(db_dsn) == []
    alias = settings.index_prefix
    es.indices.refresh(index=alias)
    assert es.count(index=alias)["count"] == 11  # root, 5 items, 2 news, legacy, the mapping, the list

    def search(query: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return es.search(index=alias, query=query, size=50, **kw)

    # state.modification_date >= "2026-06-01"  (a date range with only a lower bound)
    assert _ids(search({"range": {"state.modification_date": {"gte": "2026-06-01"}}})) == {"minutes", "agenda"}
    # state.rating >= 3 and state.rating <= 10  (numeric, with fractional values and a Decimal)
    assert _ids(search({"range": {"state.rating": {"gte": 3, "lte": 10}}})) == {"minutes", "agenda", "report"}
    # state.title : minutes  (a word of a title)
    assert _ids(search({"match": {"state.title": "minutes"}})) == {"minutes", "report"}
    # state.title.keyword : "Minutes of June"  (exact filter)
    assert _ids(search({"term": {"state.title.keyword": "Minutes of June"}})) == {"minutes"}
    assert _ids(search({"match": {"state.title": "june"}})) == {"minutes", "agenda"}  # the newer state
    # the transform's fields: fields.review_state : published and fields.effective < "2026-06-02"
    assert _ids(search({"bool": {"filter": [{"term": {"fields.review_state.keyword": "published"}},
                                            {"range": {"fields.effective": {"lt": "2026-06-02"}}}]}})) \
        == {"minutes", "archive"}
    # naive = UTC, aware converted: 12:00 naive is 12:00Z, 12:00+02:00 is 10:00Z
    assert _ids(search({"range": {"state.published": {"gte": "2026-06-01T11:00:00Z"}}})) == {"Naive news"}
    # older DateTime pickles (a dict with _micros, or only _t), read back as dates
    for name in ("stamped", "touched"):
        assert _ids(search({"range": {f"state.{name}": {"gte": "2026-06-01T10:30:00.5Z",
                                                           "lte": "2026-06-01T10:30:00.5Z"}}})) == {"Legacy dates"}
    # one attribute, two kinds (code: a string in Item, a number in News and archive): all indexed,
    # each findable (values holds numbers, text the strings)
    assert _ids(search({"term": {"values": "17"}})) == {"archive"}
    assert _ids(search({"match_phrase": {"text": "A-1"}})) == {"minutes", "budget", "agenda", "report"}

    # a date histogram of effective, by month, as Kibana's visualisation asks for it
    answer = search({"exists": {"field": "fields.effective"}},
                    aggs={"per_month": {"date_histogram": {"field": "fields.effective",
                                                           "calendar_interval": "month"}}})
    buckets = {b["key_as_string"][:7]: b["doc_count"] for b in answer["aggregations"]["per_month"]["buckets"]
               if b["doc_count"]}
    assert buckets == {"2025-12": 1, "2026-05": 1, "2026-06": 2, "2026-07": 1}
    # sorted by modification date, newest first
    answer = search({"exists": {"field": "state.modification_date"}}, sort=[{"state.modification_date": "desc"}])
    assert [h["_source"]["state"]["id"] for h in answer["hits"]["hits"]] == \
        ["agenda", "minutes", "report", "budget", "archive"]  # report: 2026-05-31T23:30Z

    caps = es.field_caps(index=alias, fields=["state.*", "fields.*", "values", "more", "committed_at"])["fields"]
    types = {name: sorted(kinds) for name, kinds in caps.items()}
    expected = {
        "state.modification_date": ["date"], "state.effective_date": ["date"], "state.published": ["date"],
        "state.workflow_history.simple_publication_workflow.time": ["date"],
        "state.stamped": ["date"], "state.touched": ["date"], "state.rating": ["double"], "state.title": ["text"], "state.title.keyword": ["keyword"],
        "fields.effective": ["date"], "fields.modified": ["date"], "fields.review_state": ["text"],
        "fields.review_state.keyword": ["keyword"], "fields.portal_type.keyword": ["keyword"],
        "values": ["keyword"], "more": ["flattened"], "committed_at": ["date"],
    }
    assert {name: types.get(name) for name in expected} == expected
    assert not any(name.startswith("state.data.key-") for name in caps)  # the 5,000 keys: one field
    assert es.count(index=alias, query={"term": {"more.data.key-4321.label": "entry 4321"}})["count"] == 1
    assert es.count(index=alias, query={"match": {"state.data": "beta"}})["count"] == 1  # the list
    index = f"{alias}-objects"
    mapping = es.indices.get_mapping(index=index)[index]["mappings"]
    assert len(mapping["properties"]["state"]["properties"]) < TYPED_FIELDS_LIMIT


def test_flattened_index_moves_to_typed_without_downtime(zodb, db_dsn, es, es_url, es_prefix):
    """The migration of docs/documents.md: an index of the former default is not written with
    typed documents (the service refuses to start, saying how), and ``esindexer reindex``
    builds, verifies and publishes a typed generation beside it."""
    conn = zodb.open()
    conn.root()["minutes"] = Item("minutes", "Minutes of June", effective=DateTime("2026/06/01 GMT"),
                                  modified=DateTime("2026/06/15 GMT"), rating=3.5)
    transaction.commit()
    conn.close()
    alias = es_prefix.rstrip("-")
    old = make_settings(db_dsn, es_url, es_prefix, index_prefix=f"{alias}-gen1", alias=alias,
                        state_mapping="flattened")
    assert Indexer(old, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    # upgrading in place (the typed default on the flattened index) stops at start, saying how
    upgraded = make_settings(db_dsn, es_url, es_prefix, index_prefix=f"{alias}-gen1", alias=alias)
    with pytest.raises(SetupError, match="created with state_mapping=flattened.*ESINDEXER_STATE_MAPPING=flattened"):
        ensure_indices(es, upgraded)
    assert Indexer(upgraded, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.SETUP
    query = {"range": {"state.modification_date": {"gte": "2026-06-01"}}}
    es.indices.refresh(index=alias)
    with pytest.raises(Exception, match="queries on keyed \\[flattened\\] fields must include both"):
        es.search(index=alias, query=query)  # the old generation: the HTTP 400

    env = {"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_INDEX_PREFIX": f"{alias}-gen1",
           "ESINDEXER_ALIAS": alias, "ESINDEXER_INDEX_REPLICAS": "0", "ESINDEXER_METRICS_PORT": "0"}
    done = run_esindexer("reindex", "--to", f"{alias}-gen2", env={**env, "ESINDEXER_STATE_MAPPING": "typed"},
                         timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"alias {alias}: {alias}-gen1-objects -> {alias}-gen2-objects" in done.stdout
    assert es.indices.get_mapping(index=f"{alias}-gen2-objects")[f"{alias}-gen2-objects"]["mappings"][
        "_meta"]["state_mapping"] == "typed"
    es.indices.refresh(index=alias)
    assert es.count(index=alias, query=query)["count"] == 1
    assert dead_letters(db_dsn) == []
    # switching back by hand with the typed settings (not the old generation's) is refused:
    # the switch would install the typed template over the flattened generation
    done = run_esindexer("alias", env={**env, "ESINDEXER_STATE_MAPPING": "typed", "ESINDEXER_CLIENT_ID": "esindexer"})
    assert done.returncode == ExitCode.SETUP, done.stdout + done.stderr
    assert "created with state_mapping=flattened" in done.stderr
    assert sorted(es.indices.get_alias(name=alias)) == [f"{alias}-gen2-objects"]
