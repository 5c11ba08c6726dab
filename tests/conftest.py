"""Fixtures that give every test real servers.

Where the servers come from, in order:

1. the environment (``ESIT_PG_DSN``, ``ESIT_ES_URL``), as printed by
   ``scripts/services up`` and set by ``scripts/test``;
2. testcontainers, when a Docker engine answers;
3. otherwise the test is skipped, or fails when ``ESIT_REQUIRE_SERVICES=1`` (CI),
   with a message naming the command that starts the servers.

Each test gets a fresh PostgreSQL database (RelStorage creates its schema on first
open) and an Elasticsearch name prefix whose indices and templates are removed after it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from tests.support import fresh_database, open_zodb, require_services, search_client, search_engine

log = logging.getLogger("esindexer.tests")

# Images used only when a Docker engine is available; the versions follow deploy/versions.env.
_VERSIONS = dict(
    line.strip().split("=", 1)
    for line in open(os.path.join(os.path.dirname(__file__), "..", "deploy", "versions.env"))
    if "=" in line and not line.lstrip().startswith("#")
)
ES_IMAGE = f"docker.elastic.co/elasticsearch/elasticsearch:{_VERSIONS['ELASTICSEARCH_VERSION']}"
PG_IMAGE = f"postgres:{_VERSIONS['POSTGRES_MAJOR']}"
START_HINT = "start them with `eval \"$(scripts/services up)\"` (or run `scripts/test`)"


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def _unavailable(what: str) -> None:
    message = f"{what} is not available: no environment variable, no Docker engine; {START_HINT}"
    if require_services():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN (URI form) of a PostgreSQL role that may create databases."""
    if dsn := os.environ.get("ESIT_PG_DSN"):
        yield dsn
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(PG_IMAGE, driver=None) as pg:
            yield pg.get_connection_url()
        return
    _unavailable("PostgreSQL")


@pytest.fixture(scope="session")
def es_url() -> Iterator[str]:
    """URL of a real Elasticsearch node with security off."""
    if url := os.environ.get("ESIT_ES_URL"):
        yield url
        return
    if _docker_available():
        from testcontainers.elasticsearch import ElasticSearchContainer

        with ElasticSearchContainer(ES_IMAGE, mem_limit="2G") as es:
            yield f"http://{es.get_container_host_ip()}:{es.get_exposed_port(es.port)}"
        return
    _unavailable("Elasticsearch")


@pytest.fixture(scope="session")
def es_constrained_url() -> Iterator[str]:
    """URL of a second, small Elasticsearch node that answers 413 and 429 (see
    ``tests/es_nodes.py``); started on first use, stopped at the end of the session."""
    from tests import es_nodes

    if search_engine() == "opensearch":  # the same limits on an OpenSearch node
        home, java_home = os.environ.get("ESIT_OPENSEARCH_HOME"), os.environ.get("ESIT_OPENSEARCH_JAVA_HOME")
        if not (home and java_home):
            _unavailable("A constrained OpenSearch node (ESIT_OPENSEARCH_HOME)")
        with es_nodes.local_node(home, java_home, os.environ.get("ESIT_OPENSEARCH_USER"), "opensearch") as url:
            yield url
        return
    home, java_home = os.environ.get("ESIT_ES_HOME"), os.environ.get("ESIT_ES_JAVA_HOME")
    if home and java_home:
        with es_nodes.local_node(home, java_home, os.environ.get("ESIT_ES_USER")) as url:
            yield url
        return
    if _docker_available():
        with es_nodes.docker_node(ES_IMAGE) as url:
            yield url
        return
    _unavailable("A constrained Elasticsearch node (ESIT_ES_HOME)")


@pytest.fixture(scope="session")
def es_secured():
    """A node with security on: HTTPS with a test CA, a superuser, API keys (see
    ``tests/es_nodes.py``); a ``SecuredNode`` with url, ca_file, username, password."""
    from tests import es_nodes

    home = os.environ.get("ESIT_ES_HOME")
    java_home = os.environ.get("ESIT_ES_JAVA_HOME")
    if not (home and java_home):
        _unavailable("A secured Elasticsearch node (ESIT_ES_HOME)")
    with es_nodes.secured_node(home, java_home, os.environ.get("ESIT_ES_USER")) as node:
        yield node


@pytest.fixture
def es_constrained(es_constrained_url: str):
    """A client of the constrained node; indices are removed after the test."""
    client = search_client(es_constrained_url, max_retries=0)
    try:
        yield client
    finally:
        client.options(ignore_status=404).indices.delete(index="*", expand_wildcards="all")
        client.options(ignore_status=404).indices.delete_index_template(name="*")
        client.close()


@pytest.fixture
def keep_history() -> bool:
    """History-free by default; override with ``tests.support.both_history_modes``."""
    return False


@pytest.fixture
def db_dsn(pg_dsn: str) -> Iterator[str]:
    """DSN of a fresh, empty database, dropped after the test."""
    with fresh_database(pg_dsn) as dsn:
        yield dsn


@pytest.fixture
def zodb(db_dsn: str, keep_history: bool):
    """An open ``ZODB.DB`` on RelStorage over the test's fresh database."""
    db = open_zodb(db_dsn, keep_history)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def pg_conn(db_dsn: str):
    """A psycopg2 connection to the test's database."""
    conn = psycopg2.connect(db_dsn)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="session")
def es_session_client(es_url: str):
    client = search_client(es_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def es_prefix(request, es_session_client) -> Iterator[str]:
    """A lower-case name prefix unique to this test; everything under it is removed after."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:30]
    prefix = f"t-{slug}-{uuid.uuid4().hex[:6]}-"
    yield prefix
    es = es_session_client
    es.options(ignore_status=404).indices.delete(
        index=f"{prefix}*", expand_wildcards="all", allow_no_indices=True
    )
    es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}*")


@pytest.fixture
def es(es_session_client, es_prefix):
    """An Elasticsearch client; use ``es_prefix`` in every index name you create."""
    return es_session_client


def pytest_report_header(config) -> list[str]:
    """Name the real server versions in the test run's header (CI output shows them)."""
    lines = []
    if dsn := os.environ.get("ESIT_PG_DSN"):
        try:
            with psycopg2.connect(dsn, connect_timeout=3) as conn, conn.cursor() as cur:
                cur.execute("show server_version")
                lines.append(f"PostgreSQL server: {cur.fetchone()[0]} ({dsn.split('@')[-1]})")
            conn.close()
        except Exception as exc:  # header only: the fixtures report the real failure
            lines.append(f"PostgreSQL server: unreachable ({exc.__class__.__name__})")
    if (url := os.environ.get("ESIT_ES_URL")) and search_engine() == "opensearch":
        try:
            client = search_client(url, request_timeout=5)
            lines.append(f"OpenSearch server: {client.check_server()['number']} at {url}")
            client.close()
        except Exception as exc:
            lines.append(f"OpenSearch server: unreachable ({exc.__class__.__name__})")
    elif url:
        try:
            from elasticsearch import Elasticsearch

            client = Elasticsearch(url, request_timeout=5)
            nodes = client.nodes.info(node_id="_local", metric="jvm")["nodes"]
            for node in nodes.values():
                lines.append(
                    f"Elasticsearch server: {node['version']} (build {node.get('build_flavor', '?')}, "
                    f"JVM {node['jvm']['version']}) at {url}"
                )
            client.close()
        except Exception as exc:
            lines.append(f"Elasticsearch server: unreachable ({exc.__class__.__name__})")
    return lines


@pytest.fixture
def indexer_role(db_dsn):
    """A login role with no rights at all (not a superuser); dropped, with what was granted
    to it, afterwards. ``(name, its DSN)``; ``esindexer setup --grant-to`` gives it rights."""
    name = f"esit_indexer_{uuid.uuid4().hex[:8]}"
    with psycopg2.connect(db_dsn) as admin, admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'indexer-secret'")
    admin.close()
    parts = urlsplit(db_dsn)
    yield name, urlunsplit(parts._replace(netloc=f"{name}:indexer-secret@{parts.hostname}:{parts.port}"))
    with psycopg2.connect(db_dsn) as admin, admin.cursor() as cur:
        cur.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'")
        cur.execute(f"DROP OWNED BY {name}")
        cur.execute(f"DROP ROLE {name}")
    admin.close()


# Fixtures that start a node of their own for the session: under pytest-xdist
# (scripts/test runs the main suite with --dist loadgroup) every test that uses one runs on
# the same worker, so each kind of node starts once, not once per worker.
_NODE_GROUPS = {"es_secured": "secured-node", "es_constrained_url": "constrained-node"}


def pytest_itemcollected(item) -> None:
    """Marked as each test is collected, before xdist reads the groups."""
    group = next((name for fixture, name in _NODE_GROUPS.items() if fixture in getattr(item, "fixturenames", ())),
                 None)
    if item.path.name == "test_docs_commands.py":  # the documented commands share paths (/tmp/base)
        group = "documented-commands"
    if group:
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:
    """On an xdist worker with ``--dist loadgroup``, xdist has by now written each test's group
    into its node id; if it has not (pytest 9.2 with xdist 3.8 silently stopped doing so), the
    groups would be ignored and each worker would start its own nodes: fail instead."""
    if not (hasattr(config, "workerinput") and config.getvalue("loadgroup")):
        return
    lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:  # (a worker's exception reaches the terminal only as xdist's INTERNALERROR: say why first)
        print(f"pytest-xdist ignored the xdist_group of {len(lost)} tests: see pyproject.toml", file=sys.__stderr__)
        raise pytest.UsageError(f"pytest-xdist ignored the xdist_group of {len(lost)} tests (e.g. {lost[0]}): "
                                f"this pytest and pytest-xdist do not work together; see pyproject.toml")
