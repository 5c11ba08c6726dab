"""What the object model's end-to-end tests share: ``live``, a small corpus of the test
application indexed by a running ``esindexer run`` with ``ESINDEXER_DOCUMENTS=objects``."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg2
import pytest

from esindexer.source import graph
from tests.objects import corpus, index, truth
from tests.objects.live import AppWriter
from tests.pipeline.processes import service_env
from tests.support import open_zodb


@pytest.fixture
def conn(db_dsn: str):
    """A connection to the test database, the object graph's tables made."""
    connection = psycopg2.connect(db_dsn)
    assert graph.ensure_tables(connection)
    connection.commit()
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def live(keep_history, db_dsn, es, es_url, es_prefix, tmp_path):
    """A small corpus indexed by a running service; ``live.do(change)`` commits a change."""
    db = open_zodb(db_dsn, keep_history)
    built = corpus.build_corpus(db, items=300, infra_records=300, mimetypes=20)
    db.close()
    service = index.start_service(db_dsn, es_url, es_prefix, tmp_path)
    writer = AppWriter(db_dsn, keep_history, built.item_paths)
    env = {k: v for k, v in service_env(db_dsn, es_url, es_prefix, DOCUMENTS="objects").items()
           if k.startswith("ESINDEXER_")}
    state = SimpleNamespace(service=service, writer=writer, built=built, do=writer.do, env=env, prefix=es_prefix, es=es,
                            truth=lambda: truth.objects(db_dsn, keep_history),
                            docs=lambda: index.documents(es, es_prefix),
                            found=lambda query: index.hits(es, es_prefix, query),
                            settle=lambda timeout=60: index.settle(es, es_prefix, state.truth, timeout=timeout))
    try:
        state.settle(180)
        yield state
    finally:
        writer.close()
        index.wait_ready(state.service)  # a SIGTERM before the service is up kills it (-15)
        code = state.service.stop()
    assert code == 0, state.service.log()[-3000:]
