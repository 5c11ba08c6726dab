"""Every mistake an operator can make ends as one line and a documented exit code.

Against the real servers: a wrong PostgreSQL password, Elasticsearch away, https
against an http node, http against an https node, a port that is not Elasticsearch's,
a database esindexer never ran against.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit, urlunsplit

import pytest
import transaction

from esindexer.errors import ExitCode
from tests.indexing import Page
from tests.support import run_esindexer


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _one_line(done, code: ExitCode) -> str:
    assert done.returncode == code, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("esindexer: ")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def _with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    user = parts.username
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


@pytest.mark.parametrize("argv", [["status"], ["verify"], ["dead-letters"], ["install-trigger"],
                                  ["run", "--until-caught-up"], ["run"]], ids=" ".join)
def test_a_wrong_postgresql_password_is_exit_2_not_retried(db_dsn, es_url, es_prefix, argv):
    done = run_esindexer(*argv, env=dict(ESINDEXER_PG_DSN=_with_password(db_dsn, "not-the-password"),
                                         ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
                                         ESINDEXER_METRICS_PORT="0", ESINDEXER_LOG_FORMAT="json"), timeout=60)
    if argv[0] == "run":  # the service logs its error, then exits
        assert done.returncode == ExitCode.SETUP, done.stderr[-3000:]
        assert "password (or the user) in ESINDEXER_PG_DSN is wrong" in done.stderr
        assert "retrying in" not in done.stderr  # the service did not retry it
        assert "retrying with back-off" not in done.stderr  # nor did its lag poller say so (issue 26.7)
    else:
        line = _one_line(done, ExitCode.SETUP)
        assert "password (or the user) in ESINDEXER_PG_DSN is wrong" in line
    assert "not-the-password" not in done.stderr + done.stdout


def test_a_database_that_does_not_exist_is_exit_2(pg_dsn):
    parts = urlsplit(pg_dsn)
    done = run_esindexer("status", env=dict(ESINDEXER_PG_DSN=urlunsplit(parts._replace(path="/no_such_db_x"))))
    assert "does not exist" in _one_line(done, ExitCode.SETUP)


def test_postgresql_away_is_exit_5(pg_dsn):
    parts = urlsplit(pg_dsn)
    away = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{_closed_port()}"))
    assert "cannot reach PostgreSQL" in _one_line(run_esindexer("status", env=dict(ESINDEXER_PG_DSN=away)),
                                                  ExitCode.UNREACHABLE)


@pytest.fixture
def indexed_db(zodb, db_dsn, es_url, es_prefix):
    """A database indexed once, holding one dead letter (so that --redeliver contacts Elasticsearch)."""
    import psycopg2

    from esindexer.source.deadletters import DeadLetter, add

    conn = zodb.open()
    conn.root()["x"] = Page("x")
    transaction.commit()
    conn.close()
    env = dict(ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
               ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_PORT="0")
    assert run_esindexer("run", "--until-caught-up", env=env).returncode == 0
    with psycopg2.connect(db_dsn) as pg:
        add(pg, "esindexer", [DeadLetter(1, 1, "rejected", "test letter")])
    pg.close()
    return env


@pytest.mark.parametrize("argv", [["verify"], ["alias"], ["dead-letters", "--redeliver"]], ids=" ".join)
def test_elasticsearch_away_is_one_line_exit_5(indexed_db, argv):
    url = f"http://127.0.0.1:{_closed_port()}"
    done = run_esindexer(*argv, env={**indexed_db, "ESINDEXER_ES_URL": url})
    line = _one_line(done, ExitCode.UNREACHABLE)
    assert f"cannot reach Elasticsearch at {url}" in line and "is Elasticsearch running" in line


def test_https_against_an_http_node_is_exit_2_with_a_hint(indexed_db, es_url):
    https = es_url.replace("http://", "https://")
    for argv in (["alias"], ["run", "--until-caught-up"]):
        done = run_esindexer(*argv, env={**indexed_db, "ESINDEXER_ES_URL": https}, timeout=60)
        assert done.returncode == ExitCode.SETUP, done.stderr[-2000:]
        assert "answers in plain HTTP; use http://" in done.stderr


def test_http_against_an_https_node_names_the_likely_cause(indexed_db, es_secured):
    plain = es_secured.url.replace("https://", "http://")
    done = run_esindexer("alias", env={**indexed_db, "ESINDEXER_ES_URL": plain, "ESINDEXER_RETRY_ATTEMPTS": "1"})
    line = _one_line(done, ExitCode.UNREACHABLE)
    assert "an HTTPS-only node reached with http://" in line


def test_a_port_that_is_not_elasticsearch_names_the_likely_cause(indexed_db, pg_dsn):
    not_es = f"http://127.0.0.1:{urlsplit(pg_dsn).port}"  # PostgreSQL's port
    done = run_esindexer("verify", env={**indexed_db, "ESINDEXER_ES_URL": not_es})
    line = _one_line(done, ExitCode.UNREACHABLE)
    assert "not Elasticsearch's HTTP port" in line


def test_dead_letters_on_a_database_esindexer_never_ran_against(zodb, db_dsn):
    conn = zodb.open()
    conn.root()["x"] = Page("x")
    transaction.commit()
    conn.close()
    done = run_esindexer("dead-letters", env=dict(ESINDEXER_PG_DSN=db_dsn))
    assert "esindexer has not run against it" in _one_line(done, ExitCode.SETUP)
    assert "no dead letters" not in done.stdout


def test_dead_letters_on_a_database_without_relstorage(db_dsn):
    done = run_esindexer("dead-letters", env=dict(ESINDEXER_PG_DSN=db_dsn))
    assert "RelStorage" in _one_line(done, ExitCode.SETUP)
