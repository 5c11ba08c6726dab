"""``esindexer explain ZOID`` on real servers: indexed, dead-lettered, skipped, not yet indexed, packed."""

from __future__ import annotations

import json

import psycopg2
import pytest
import transaction

from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.ops.explain import parse_zoid
from esindexer.pipeline.indexer import Indexer
from tests.indexing import Folderish, Page, make_settings, zoid_of
from tests.ops.test_redeliver import _UNCONVERTIBLE  # unreadable for the converter, not for a pack
from tests.support import both_history_modes, run_esindexer


def test_an_object_id_is_read_as_decimal_0x_hex_or_zodb_hex():
    assert parse_zoid("42") == parse_zoid("0x2a") == parse_zoid("000000000000002a") == 42
    assert parse_zoid(" 0X2A ") == 42
    for bad in ("page", "-1", "0x", "1e3", "0x" + "f" * 17):
        with pytest.raises(ValueError):
            parse_zoid(bad)


def _explain(settings, oid: str) -> dict:
    env = {"ESINDEXER_PG_DSN": settings.pg_dsn, "ESINDEXER_ES_URL": ",".join(settings.es_url),
           "ESINDEXER_INDEX_PREFIX": settings.index_prefix,
           "ESINDEXER_CLASS_EXCLUDE": ",".join(settings.class_exclude)}
    done = run_esindexer("explain", oid, "--json", env=env)
    assert done.returncode == 0, done.stderr
    text = run_esindexer("explain", oid, env=env)  # the text form says the same verdict
    assert text.returncode == 0, text.stderr
    report = json.loads(done.stdout)
    assert f"verdict     {report['verdict']}" in text.stdout
    return report


def _index(settings) -> None:
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK


@both_history_modes
def test_explain_tells_where_each_object_is_and_why(zodb, db_dsn, es, es_url, es_prefix, keep_history):
    conn = zodb.open()
    root = conn.root()
    root["page"] = page = Page("findable")
    root["broken"] = broken = Page("to be made unreadable")
    root["folder"] = folder = Folderish("excluded")
    root["doomed"] = doomed = Page("packed away")
    transaction.commit()
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("UPDATE object_state SET state = %s WHERE zoid = %s", (psycopg2.Binary(_UNCONVERTIBLE),
                                                                           zoid_of(broken)))
    pg.close()
    settings = make_settings(db_dsn, es_url, es_prefix, class_exclude="tests.indexing.Folderish")
    _index(settings)
    index = f"{settings.index_prefix}-objects"
    es.indices.refresh(index=index)  # referrers come from a search: what the last refresh published

    # indexed, asked by its ZODB hex oid
    found = _explain(settings, page._p_oid.hex())
    assert found["zoid"] == zoid_of(page) and found["oid"] == "0x" + page._p_oid.hex()
    record = found["record"]
    assert record["exists"] and record["tid"] == int.from_bytes(page._p_serial, "big") and record["size"] > 0
    assert record["history"] == ("history-preserving" if keep_history else "history-free")
    assert record["revisions"] == (1 if keep_history else None)
    assert found["conversion"] == {"kind": "ok", "class": "tests.indexing.Page",
                                   "json_bytes": found["conversion"]["json_bytes"]}
    assert found["index"] == index and found["documents"][index]["version"] == record["tid"]
    assert found["verdict"] == f"indexed in {index} at its current tid"
    assert found["referenced_by"]["total"] == 1 and found["referenced_by"]["shown"][0]["zoid"] == 0  # the root
    assert found["dead_letters"] == [] and found["pending_pack_deletion"] is False

    # dead-lettered: the converter cannot read it
    letter = _explain(settings, hex(zoid_of(broken)))
    assert letter["conversion"]["kind"] == "error" and letter["documents"] == {}
    assert [x["kind"] for x in letter["dead_letters"]] == ["unconvertible"]
    assert letter["verdict"].startswith("dead-lettered (unconvertible): ")

    # skipped: its class is excluded
    skipped = _explain(settings, str(zoid_of(folder)))
    assert skipped["conversion"]["kind"] == "skipped" and skipped["documents"] == {}
    assert skipped["verdict"] == ("not indexed: class tests.indexing.Folderish matches ESINDEXER_CLASS_EXCLUDE "
                                  "pattern 'tests.indexing.Folderish'")

    # changed after the saved progress: not indexed yet
    page.title = "findable, edited"
    transaction.commit()
    later = _explain(settings, str(zoid_of(page)))
    assert later["record"]["tid"] > later["documents"][index]["version"]
    assert later["verdict"].startswith("not indexed yet at tid ")
    if keep_history:
        assert later["record"]["revisions"] == 2

    # packed away: first captured and pending, then applied
    doomed_zoid = zoid_of(doomed)
    del root["doomed"]
    transaction.commit()
    zodb.pack()
    pending = _explain(settings, str(doomed_zoid))
    assert pending["record"]["exists"] is False and index in pending["documents"]
    assert pending["pending_pack_deletion"] is True
    assert pending["verdict"] == "deleted from the database (a pack); the deletion is captured and not applied yet"
    _index(settings)
    gone = _explain(settings, str(doomed_zoid))
    assert gone["documents"] == {} and gone["pending_pack_deletion"] is False
    assert gone["verdict"] == "not in the database (packed, deleted or never created) and not in the index"
    assert _explain(settings, str(zoid_of(page)))["verdict"] == f"indexed in {index} at its current tid"
    conn.close()


def test_explain_refuses_what_is_not_an_object_id(db_dsn, es_url):
    done = run_esindexer("explain", "front-page", env={"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url})
    assert done.returncode == ExitCode.SETUP and done.stdout == ""
    assert done.stderr.strip() == ("esindexer: not an object id: 'front-page' "
                                   "(give a zoid such as 42, 0x2a or 000000000000002a)")
