"""Fields an index could not map are never silent (issue 22, item 4): the service's
metric and warning, ``status`` and ``explain`` name them, against a real Elasticsearch
whose typed index reaches its 1,000-field limit."""

from __future__ import annotations

import json
import logging

import transaction

from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from tests.indexing import Page, make_settings, zoid_of
from tests.support import run_esindexer

#: Classes of 180 distinct attributes each (an instance over 200 goes whole into ``more``):
#: 1,260 attribute fields in all, more than the index's 1,000.
ATTRIBUTES, CLASSES = 180, 7


def _wide_class(k: int) -> type:
    cls = type(f"Wide{k}", (Page,), {"__module__": __name__})
    globals()[cls.__name__] = cls
    return cls


WIDE = [_wide_class(k) for k in range(CLASSES)]


def _env(settings) -> dict[str, str]:
    return {"ESINDEXER_PG_DSN": settings.pg_dsn, "ESINDEXER_ES_URL": ",".join(settings.es_url),
            "ESINDEXER_INDEX_PREFIX": settings.index_prefix}


#: Every page's body: longer than the 256 characters ``state.body.keyword`` takes, so
#: Elasticsearch lists ``state.body.keyword`` in each document's ``_ignored``. Not an unmapped
#: field (``state.body`` indexes it): before, every page was counted and warned about.
LONG_BODY = "minutes of the board " + "and more words " * 20


def test_unmapped_fields_are_counted_warned_and_named(zodb, db_dsn, es, es_url, es_prefix, caplog):
    conn = zodb.open()
    root = conn.root()
    root["plain"] = plain = Page("plain page", body=LONG_BODY)
    wides = []
    for k, cls in enumerate(WIDE):
        root[f"wide{k}"] = wide = cls(f"wide page {k}", body=LONG_BODY)
        for n in range(ATTRIBUTES):
            setattr(wide, f"c{k}_attribute_{n:03d}", n)
        wides.append(wide)
        transaction.commit()  # one after the other: the last ones find the fields used up
    wide = wides[-1]

    settings = make_settings(db_dsn, es_url, es_prefix)
    metrics = Metrics(process_metrics=False)
    with caplog.at_level(logging.WARNING, logger="esindexer.pipeline.fieldwatch"):
        assert Indexer(settings, metrics).run(until_caught_up=True) == ExitCode.OK
    count = metrics.registry.get_sample_value("esindexer_documents_with_unmapped_fields")
    assert count is not None and 1 <= count < CLASSES
    index = ",".join(settings.routed_indices)
    es.indices.refresh(index=index)
    long_ones = es.search(index=index, query={"term": {"_ignored": "state.body.keyword"}}, size=0)
    assert long_ones["hits"]["total"]["value"] == CLASSES + 1  # listed by Elasticsearch, each page
    found = es.search(index=index, query={"match": {"state.body": "board"}}, size=0)
    assert found["hits"]["total"]["value"] == CLASSES + 1  # and found by full-text search
    [warning] = [r for r in caplog.records if "did not map" in r.getMessage()]
    assert f"{count:.0f} documents hold fields" in warning.getMessage()
    named = warning.getMessage().split("refused): ")[1].split("; see")[0].split(", ")
    assert len(named) == 20 and all(n.startswith("state.c") and n.endswith(" (1)") for n in named)  # the top 20

    status = run_esindexer("status", "--json", env=_env(settings))
    assert status.returncode == 0, status.stderr
    unmapped = json.loads(status.stdout)["unmapped_fields"]
    last = f"state.c{CLASSES - 1}_attribute_{ATTRIBUTES - 1:03d}"
    assert unmapped["documents"] == count and sum(unmapped["per_index"].values()) == count
    assert [f"{name} ({n})" for name, n in unmapped["fields"].items()] == named
    text = run_esindexer("status", env=_env(settings)).stdout
    assert f"WARNING: {count:.0f} documents hold fields not indexed" in text and named[0] in text

    explained = json.loads(run_esindexer("explain", str(zoid_of(wide)), "--json", env=_env(settings)).stdout)
    [(index, document)] = explained["documents"].items()
    assert last in document["unmapped_fields"]
    plain_doc = json.loads(run_esindexer("explain", str(zoid_of(plain)), "--json", env=_env(settings)).stdout)
    assert [d["unmapped_fields"] for d in plain_doc["documents"].values()] == [[]]
    conn.close()
