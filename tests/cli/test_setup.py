"""Least privilege: ``esindexer setup --grant-to ROLE`` once, then everything runs as ROLE.

ROLE has no CREATE right on any schema (PostgreSQL 15's default for ``public``), so a
single DDL statement attempted by ``run`` would fail: the service's log is checked for
the warnings such a refusal produces, and the index for the result.
"""

from __future__ import annotations

import json
import time

import transaction

from esindexer.errors import ExitCode
from tests.indexing import commit_pages, docs, latest_tid, progress, zoid_of
from tests.support import both_history_modes, run_esindexer, scalar


@both_history_modes
def test_the_service_runs_as_a_role_granted_by_setup(zodb, db_dsn, es, es_url, es_prefix, indexer_role,
                                                     keep_history):
    role, role_dsn = indexer_role
    assert not scalar(db_dsn, "SELECT has_schema_privilege(%s, 'public', 'CREATE')", (role,))
    conn = zodb.open()
    root = conn.root()
    pages = commit_pages(root, 4)
    env = dict(ESINDEXER_PG_DSN=role_dsn, ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
               ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_PORT="0")

    before = run_esindexer("run", "--until-caught-up", env=env, timeout=60)
    assert before.returncode == ExitCode.SETUP, before.stderr[-2000:]
    assert "esindexer setup --grant-to" in before.stderr and "Traceback" not in before.stderr

    done = run_esindexer("setup", "--grant-to", role, env=dict(ESINDEXER_PG_DSN=db_dsn))
    assert done.returncode == 0, done.stdout + done.stderr
    for what in ("table esindexer_progress", "table esindexer_dead_letters", "table esindexer_deletions",
                 "pack-deletion log and capture trigger", "change-notification trigger"):
        assert f"created: {what}" in done.stdout  # issue 26.7: it said "present:" for what it had just made
    assert f'GRANT SELECT ON "object_state" TO "{role}"' in done.stdout
    again = run_esindexer("setup", "--grant-to", role, env=dict(ESINDEXER_PG_DSN=db_dsn))
    assert again.returncode == 0 and "NOT created" not in again.stdout  # idempotent
    assert "created:" not in again.stdout and "present: table esindexer_progress" in again.stdout

    run = run_esindexer("run", "--until-caught-up", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    for refusal in ("cannot install", "cannot write", "permission denied", "crash guard is off", "WARNING"):
        assert refusal not in run.stderr, run.stderr
    assert progress(db_dsn) == latest_tid(db_dsn)
    assert len(docs(es, es_prefix.rstrip("-"))) == 5

    # A pack by the application (its own role) is captured and applied by ROLE.
    victim = zoid_of(pages[0])
    del root[0]
    transaction.commit()
    zodb.pack(time.time() + 1)
    assert not scalar(db_dsn, "SELECT count(*) FROM object_state WHERE zoid = %s" if not keep_history else
                      "SELECT count(*) FROM current_object WHERE zoid = %s", (victim,))
    run = run_esindexer("run", "--until-caught-up", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert victim not in docs(es, es_prefix.rstrip("-"))

    for argv in (["status", "--json"], ["verify"], ["dead-letters"]):
        answer = run_esindexer(*argv, env=env)
        assert answer.returncode == 0, (argv, answer.stdout, answer.stderr)
    assert json.loads(run_esindexer("status", "--json", env=env).stdout)["caught_up"] is True
    conn.close()
