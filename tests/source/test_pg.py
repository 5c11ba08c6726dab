"""PostgreSQL connections: what an operator sees in pg_stat_activity (real server)."""

from __future__ import annotations

import psycopg2

from esindexer.config import load_settings
from esindexer.source import pg
from tests.indexing import commit_pages, latest_tid, make_settings, progress, running
from tests.support import wait_for


def _names(db_dsn: str) -> set[str]:
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT application_name FROM pg_stat_activity WHERE datname = current_database()")
        names = {row[0] for row in cur.fetchall()}
    conn.close()
    return names


def test_every_connection_of_the_service_names_itself(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    commit_pages(conn.root(), 3)
    settings = make_settings(db_dsn, es_url, es_prefix, client_id="shop")
    with running(settings):
        wait_for(lambda: progress(db_dsn, "shop") == latest_tid(db_dsn), message="indexed")
        names = _names(db_dsn)
        assert {"esindexer writer (shop)", "esindexer follower (shop)"} <= names, names
    conn.close()


def test_an_application_name_in_the_dsn_wins(db_dsn):
    settings = load_settings(env={"ESINDEXER_PG_DSN": db_dsn + "?application_name=mine"})
    conn = pg.connect(settings, "writer")
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW application_name")
            assert cur.fetchone()[0] == "mine"
    finally:
        conn.close()
    named = pg.connect(load_settings(env={"ESINDEXER_PG_DSN": db_dsn}), "cli")
    try:
        with named.cursor() as cur:
            cur.execute("SHOW application_name")
            assert cur.fetchone()[0] == "esindexer cli (esindexer)"
    finally:
        named.close()


def test_an_int_array_literal_reads_back_as_the_same_bigints(db_dsn):
    """``int_array`` (the object model's zoid lists, written as text) against the server's reading."""
    values = [0, 1, -7, 2**63 - 1, -(2**63), 31_658, 1]
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT %s::bigint[], %s::bigint[]", (pg.int_array(values), pg.int_array([])))
        assert cur.fetchone() == (values, [])
        cur.execute("SELECT count(*) FROM unnest(%s::bigint[]) z(zoid) WHERE z.zoid = ANY(%s::bigint[])",
                    (pg.int_array(range(5)), pg.int_array((3, 4, 9))))
        assert cur.fetchone()[0] == 2
    conn.close()
