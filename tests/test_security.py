"""Authentication and TLS against a real secured Elasticsearch node (``tests/es_nodes.py``).

The node serves HTTPS with a certificate signed by a test CA and has security on with
a file-realm user. The integ-test-zip lacks the analysis module the ``.security``
index needs, so API keys cannot be created on it; their header is checked in
test_config, user/password and certificate handling here, end to end through
``esindexer run``.
"""

from __future__ import annotations

import threading
import time

import transaction

from tests.support import run_esindexer
from tests.test_service import commit_pages, docs, zoid_of


def _env(db_dsn: str, es_prefix: str, node, user: str | None = None, **extra: str) -> dict[str, str]:
    env = {"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": node.url,
           "ESINDEXER_INDEX_PREFIX": es_prefix.rstrip("-"), "ESINDEXER_INDEX_REPLICAS": "0",
           "ESINDEXER_ES_USERNAME": user or node.username, "ESINDEXER_ES_PASSWORD": node.password,
           "ESINDEXER_ES_CA_FILE": node.ca_file, "ESINDEXER_METRICS_PORT": "0",
           "ESINDEXER_RETRY_MAX_SECONDS": "1"}
    env.update(extra)
    return env


def _authenticates(node, user: str) -> bool:
    from elasticsearch import AuthenticationException, Elasticsearch

    client = Elasticsearch(node.url, basic_auth=(user, node.password), ca_certs=node.ca_file)
    try:
        client.security.authenticate()
        return True
    except AuthenticationException:
        return False
    finally:
        client.close()


def _client(node):
    from elasticsearch import Elasticsearch

    return Elasticsearch(node.url, basic_auth=(node.username, node.password), ca_certs=node.ca_file)


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
    es = _client(es_secured)
    try:
        assert {zoid_of(p) for p in pages} <= set(docs(es, es_prefix.rstrip("-")))
        assert es_secured.password not in done.stderr  # secrets are never logged
    finally:
        es.options(ignore_status=404).indices.delete(index=f"{es_prefix}*")
        es.options(ignore_status=404).indices.delete_index_template(name=f"{es_prefix}*")
        es.close()
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


def test_credentials_revoked_while_running_stop_the_service_and_keep_progress(zodb, db_dsn, es_prefix,
                                                                              es_secured):
    from esindexer.metrics import Metrics
    from esindexer.service import EXIT_SETUP, Indexer
    from tests.support import wait_for
    from tests.test_service import dead_letters, latest_tid, make_settings, progress

    settings = make_settings(db_dsn, es_secured.url, es_prefix, es_username=es_secured.rotated,
                             es_password=es_secured.password, es_ca_file=es_secured.ca_file)
    indexer = Indexer(settings, Metrics(process_metrics=False))
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("code", indexer.run()), daemon=True)
    thread.start()
    es = _client(es_secured)
    try:
        conn = zodb.open()
        first = commit_pages(conn.root(), 3)
        wait_for(lambda: {zoid_of(p) for p in first} <= set(docs(es, settings.index_prefix)), timeout=60,
                 message="indexed while the password is right")
        indexed_up_to = progress(db_dsn)
        es_secured.set_password(es_secured.rotated, "rotated-elsewhere")  # as if the key was revoked
        wait_for(lambda: not _authenticates(es_secured, es_secured.rotated), timeout=60,
                 message="the node reloading its users file (every 5 s)")
        for page in first:
            page.title += " (changed)"
        transaction.commit()
        thread.join(60)
        assert outcome.get("code") == EXIT_SETUP  # stopped, with the reason logged; not retrying for ever
        assert progress(db_dsn) == indexed_up_to < latest_tid(db_dsn)  # the refused batch is not counted
        assert dead_letters(db_dsn) == []  # and nothing was dead-lettered for it
        conn.close()
    finally:
        indexer.stop()
        es_secured.set_password(es_secured.rotated, es_secured.password)
        es.options(ignore_status=404).indices.delete(index=f"{es_prefix}*")
        es.close()


def _may_write(node, user: str, index: str) -> bool:
    from elasticsearch import Elasticsearch

    client = Elasticsearch(node.url, basic_auth=(user, node.password), ca_certs=node.ca_file)
    try:
        return client.security.has_privileges(index=[{"names": [index], "privileges": ["write"]}])["has_all_requested"]
    finally:
        client.close()


def test_a_privilege_lost_while_running_stops_the_service_instead_of_dead_lettering(zodb, db_dsn, es_prefix,
                                                                                   es_secured, caplog):
    from esindexer.metrics import Metrics
    from esindexer.service import EXIT_SETUP, Indexer
    from tests.support import wait_for
    from tests.test_service import dead_letters, latest_tid, make_settings, progress

    settings = make_settings(db_dsn, es_secured.url, es_prefix, es_username=es_secured.demoted,
                             es_password=es_secured.password, es_ca_file=es_secured.ca_file)
    index = settings.index_for_route(settings.default_route)
    indexer = Indexer(settings, Metrics(process_metrics=False))
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("code", indexer.run()), daemon=True)
    thread.start()
    es = _client(es_secured)
    try:
        conn = zodb.open()
        first = commit_pages(conn.root(), 3)
        wait_for(lambda: {zoid_of(p) for p in first} <= set(docs(es, settings.index_prefix)), timeout=60,
                 message="indexed while the role allows it")
        indexed_up_to = progress(db_dsn)
        es_secured.set_demoted_indices("t-some-other-prefix-*")  # an administrator narrows the role
        wait_for(lambda: not _may_write(es_secured, es_secured.demoted, index), timeout=60,
                 message="the node reloading roles.yml (every 5 s)")
        for page in first:
            page.title += " (changed)"
        transaction.commit()
        thread.join(60)
        assert outcome.get("code") == EXIT_SETUP
        assert progress(db_dsn) == indexed_up_to < latest_tid(db_dsn)
        assert dead_letters(db_dsn) == []  # the per-item 403s were not dead-lettered
        assert f"Elasticsearch refused to write to {index}: security_exception" in caplog.text
        conn.close()
    finally:
        indexer.stop()
        es_secured.set_demoted_indices("t-*")
        es.options(ignore_status=404).indices.delete(index=f"{es_prefix}*")
        es.close()
