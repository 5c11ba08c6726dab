"""Authentication and TLS against a real secured Elasticsearch node (``tests/es_nodes.py``).

The node serves HTTPS with a certificate signed by a test CA and has security on with
a file-realm user. The integ-test-zip lacks the analysis module the ``.security``
index needs, so API keys cannot be created on it; their header is checked in
test_config, user/password and certificate handling here, end to end through
``esindexer run``.
"""

from __future__ import annotations

import contextlib
import threading
import time

import transaction

from tests.indexing import commit_pages, docs, zoid_of
from tests.support import run_esindexer


def _env(db_dsn: str, es_prefix: str, node, user: str | None = None, **extra: str) -> dict[str, str]:
    env = {"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": node.url,
           "ESINDEXER_INDEX_PREFIX": es_prefix.rstrip("-"), "ESINDEXER_INDEX_REPLICAS": "0",
           "ESINDEXER_ES_USERNAME": user or node.username, "ESINDEXER_ES_PASSWORD": node.password,
           "ESINDEXER_ES_CA_FILE": node.ca_file, "ESINDEXER_METRICS_PORT": "0",
           "ESINDEXER_RETRY_MAX_SECONDS": "1"}
    env.update(extra)
    return env


@contextlib.contextmanager
def _as_user(node, user: str | None = None):
    """A client of the secured node, as ``user`` (default: the superuser)."""
    from elasticsearch import Elasticsearch

    client = Elasticsearch(node.url, basic_auth=(user or node.username, node.password), ca_certs=node.ca_file)
    try:
        yield client
    finally:
        client.close()


def _authenticates(node, user: str) -> bool:
    from elasticsearch import AuthenticationException

    with _as_user(node, user) as client:
        try:
            client.security.authenticate()
            return True
        except AuthenticationException:
            return False


def _may_write(node, user: str, index: str) -> bool:
    with _as_user(node, user) as client:
        answer = client.security.has_privileges(index=[{"names": [index], "privileges": ["write"]}])
        return answer["has_all_requested"]


def test_the_documented_role_over_verified_https_indexes_and_verifies(zodb, db_dsn, es_prefix, es_secured):
    """User and password over HTTPS checked against the CA, as a user holding only the
    least-privilege role of docs/configuration.md: the service and verify both work."""
    conn = zodb.open()
    pages = commit_pages(conn.root(), 3)
    env = _env(db_dsn, es_prefix, es_secured, user=es_secured.writer)
    done = run_esindexer("run", "--until-caught-up", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    check = run_esindexer("verify", env=env)
    assert check.returncode == 0, check.stdout + check.stderr[-2000:]
    with _as_user(es_secured) as es:
        try:
            assert {zoid_of(p) for p in pages} <= set(docs(es, es_prefix.rstrip("-")))
            assert es_secured.password not in done.stderr  # secrets are never logged
        finally:
            es.options(ignore_status=404).indices.delete(index=f"{es_prefix}*")
            es.options(ignore_status=404).indices.delete_index_template(name=f"{es_prefix}*")
    conn.close()


def test_wrong_password_is_a_clear_error_not_an_endless_retry(db_dsn, es_prefix, es_secured):
    started = time.monotonic()
    done = run_esindexer("run", "--until-caught-up",
                         env=_env(db_dsn, es_prefix, es_secured, ESINDEXER_ES_PASSWORD="wrong"), timeout=60)
    assert done.returncode == 2
    assert "Elasticsearch refused the credentials (HTTP 401" in done.stderr
    assert time.monotonic() - started < 30


def test_a_missing_privilege_is_a_clear_error(db_dsn, es_prefix, es_secured):
    done = run_esindexer("run", "--until-caught-up",
                         env=_env(db_dsn, es_prefix, es_secured, user=es_secured.no_templates), timeout=60)
    assert done.returncode == 2
    assert "lacks a privilege (HTTP 403" in done.stderr and "manage_index_templates" in done.stderr


def test_unverifiable_certificate_is_a_clear_error(db_dsn, es_prefix, es_secured):
    done = run_esindexer("run", "--until-caught-up",
                         env=_env(db_dsn, es_prefix, es_secured, ESINDEXER_ES_CA_FILE=""), timeout=60)
    assert done.returncode == 2
    assert "CERTIFICATE_VERIFY_FAILED" in done.stderr and "ESINDEXER_ES_CA_FILE" in done.stderr


def _refused_while_running(zodb, db_dsn, es_prefix, node, user: str, take_away, taken_away, give_back):
    """Index as ``user``; then ``take_away()`` its right to write and wait for ``taken_away()``
    (the node reloads its security files every 5 s) and commit again. The service must
    stop with exit code 2, keep its progress at the last acknowledged batch and dead-letter
    nothing."""
    from esindexer.errors import ExitCode
    from esindexer.observe.metrics import Metrics
    from esindexer.pipeline.indexer import Indexer
    from tests.indexing import dead_letters, latest_tid, make_settings, progress
    from tests.support import wait_for

    settings = make_settings(db_dsn, node.url, es_prefix, es_username=user, es_password=node.password,
                             es_ca_file=node.ca_file)
    indexer = Indexer(settings, Metrics(process_metrics=False))
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("code", indexer.run()), daemon=True)
    thread.start()
    try:
        with _as_user(node) as es:
            conn = zodb.open()
            first = commit_pages(conn.root(), 3)
            wait_for(lambda: {zoid_of(p) for p in first} <= set(docs(es, settings.index_prefix)), timeout=60,
                     message="indexed while the right is there")
            # (the documents can be searchable a moment before their progress is saved)
            wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), timeout=60, message="the progress saved")
            indexed_up_to = progress(db_dsn)
            take_away()
            wait_for(taken_away, timeout=60, message="the node reloading its security files (every 5 s)")
            for page in first:
                page.title += " (changed)"
            transaction.commit()
            thread.join(60)
            assert outcome.get("code") == ExitCode.SETUP  # stopped, with the reason logged; not retrying for ever
            assert progress(db_dsn) == indexed_up_to < latest_tid(db_dsn)  # the refused batch is not counted
            assert dead_letters(db_dsn) == []  # and nothing was dead-lettered for it
            conn.close()
    finally:
        indexer.stop()
        give_back()
        with _as_user(node) as es:
            es.options(ignore_status=404).indices.delete(index=f"{es_prefix}*")


def test_credentials_revoked_while_running_stop_the_service_and_keep_progress(zodb, db_dsn, es_prefix,
                                                                              es_secured):
    node, user = es_secured, es_secured.rotated
    _refused_while_running(zodb, db_dsn, es_prefix, node, user,
                           take_away=lambda: node.set_password(user, "rotated-elsewhere"),  # as if revoked
                           taken_away=lambda: not _authenticates(node, user),
                           give_back=lambda: node.set_password(user, node.password))


def test_a_privilege_lost_while_running_stops_the_service_instead_of_dead_lettering(zodb, db_dsn, es_prefix,
                                                                                   es_secured, caplog):
    node, user = es_secured, es_secured.demoted
    index = f"{es_prefix}objects"
    _refused_while_running(zodb, db_dsn, es_prefix, node, user,
                           take_away=lambda: node.set_demoted_indices("t-some-other-prefix-*"),  # role narrowed
                           taken_away=lambda: not _may_write(node, user, index),
                           give_back=lambda: node.set_demoted_indices("t-*"))
    # the per-item 403s stopped it, they were not dead-lettered
    assert f"Elasticsearch refused to write to {index}: security_exception" in caplog.text
