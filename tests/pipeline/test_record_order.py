"""The same objects are indexed whatever order their records arrive in (issue 21).

An outside harness found two partitions (``0/2``, ``1/2``) indexing a different set of
objects than one process over the same database: after a record holding both
surrogate-escaped text and an integer of 2**53 or more, the *next* record the same
converter read was dead-lettered. Here real ZODB + RelStorage writes such records
between ordinary ones; one process and two partitions (which see different neighbours)
index it, and each must index every object ZODB itself reads back, with no dead letter.
"""

from __future__ import annotations

import random

import psycopg2
from persistent.mapping import PersistentMapping

from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from tests.indexing import Page, make_settings, zoid_of
from tests.support import both_history_modes


def _ids(es, alias: str) -> set[int]:
    es.indices.refresh(index=alias)
    hits = es.search(index=alias, size=5000, query={"match_all": {}}, source=False)["hits"]["hits"]
    return {int(h["_id"]) for h in hits}


@both_history_modes
def test_one_process_and_two_partitions_index_the_same_objects(zodb, db_dsn, es_url, es, es_prefix):
    import transaction

    rng = random.Random(21)
    conn = zodb.open()
    root = conn.root()
    written = []
    for n in range(400):
        page = Page(f"page {n}")
        if rng.random() < 0.3:  # text as a Latin-1 site's py2 str decodes, and a long
            page.legacy = {"title": "caf\udce9 cr\udce8me", "views": 2**53 + n, "big": -(2**63)}
        if rng.random() < 0.1:
            page.notes = PersistentMapping({"lone": "\ud800", "n": 2**64})
        root[f"p{n}"] = page
        written.append(page)
        if n % 37 == 36:
            transaction.commit()
    transaction.commit()
    expected = {zoid_of(p) for p in written}
    conn.close()

    one = make_settings(db_dsn, es_url, f"{es_prefix}one-", client_id="single")
    assert Indexer(one, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    for part in ("0/2", "1/2"):
        settings = make_settings(db_dsn, es_url, f"{es_prefix}parts-", partition=part)
        assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK

    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("SELECT client_id, zoid, reason FROM esindexer_dead_letters")
        letters = cur.fetchall()
    pg.close()
    assert letters == []
    single, parts = _ids(es, f"{es_prefix}one"), _ids(es, f"{es_prefix}parts")
    assert expected <= single
    assert single == parts
