"""HealthServer: real HTTP requests on an ephemeral port, and the readiness rules."""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest

from esindexer.observe.http import HealthServer
from esindexer.observe.metrics import Metrics
from tests.observe.support import make_tid


def get(server: HealthServer, path: str, headers: dict[str, str] | None = None):
    """``(status, headers, body)`` of a real GET against the running server."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def caught_up_metrics() -> Metrics:
    m = Metrics()
    tid = make_tid(2026, 11, 27, 9, 0)
    m.record_source_latest(tid)
    m.record_progress(tid)
    return m


@pytest.fixture
def serve():
    servers: list[HealthServer] = []

    def start(metrics: Metrics, **kwargs) -> HealthServer:
        server = HealthServer(metrics, "127.0.0.1", 0, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def es_check_for(url: str):
    """What the service passes: a cluster health call with a short timeout, no retries.

    The integ-test-zip has no ``GET /``, so ``_cluster/health`` is the probe.
    """
    from elasticsearch import Elasticsearch

    client = Elasticsearch(url, request_timeout=2, max_retries=0)

    def check() -> None:
        client.cluster.health(timeout="1s")

    return check


# -- endpoints ---------------------------------------------------------------------------


def test_endpoints_over_http(serve):
    m = caught_up_metrics()
    m.record_documents("index", "ok", 2)
    server = serve(m)
    assert server.port != 0

    status, headers, body = get(server, "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["Content-Type"].startswith("text/plain")

    status, _, body = get(server, "/readyz")
    assert (status, body) == (200, b"ready\n")

    status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'esindexer_documents_total{action="index",outcome="ok"} 2.0' in text
    assert "esindexer_lag_seconds 0.0" in text

    status, _, _ = get(server, "/nope")
    assert status == 404


def test_metrics_content_negotiation_is_the_client_librarys(serve):
    server = serve(Metrics())
    status, headers, body = get(server, "/metrics", {"Accept": "application/openmetrics-text",
                                                     "Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert gzip.decompress(body).decode().rstrip().endswith("# EOF")


def test_readyz_reports_reasons_as_plain_text(serve):
    m = Metrics()
    server = serve(m)
    status, headers, body = get(server, "/readyz")
    assert status == 503
    assert headers["Content-Type"].startswith("text/plain")
    assert b"PostgreSQL: not polled yet" in body
    m.record_source_unreachable("PostgreSQL unreachable: OperationalError: boom")
    m.set_error_budget_exhausted(True)
    status, _, body = get(server, "/readyz")
    lines = body.decode().splitlines()
    assert status == 503
    assert lines[0] == "PostgreSQL unreachable: OperationalError: boom"
    assert lines[1].startswith("error budget exhausted")


def test_scraped_metrics_pass_promtool(serve):
    promtool = os.environ.get("ESIT_PROMTOOL") or shutil.which("promtool") \
        or "/usr/bin/promtool"
    if not os.path.exists(promtool):
        pytest.skip("promtool not installed")
    m = caught_up_metrics()
    m.record_bulk("ok", 0.01)
    server = serve(m)
    status, _, body = get(server, "/metrics")
    assert status == 200
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                            timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_port_in_use_fails_at_start_with_one_line_naming_the_port():
    from esindexer.errors import SetupError

    first = HealthServer(Metrics(), "127.0.0.1", 0)
    first.start()
    try:
        with pytest.raises(SetupError) as raised:
            HealthServer(Metrics(), "127.0.0.1", first.port).start()
        assert str(raised.value).startswith(f"metrics port 127.0.0.1:{first.port} is already in use")
        assert "\n" not in str(raised.value) and "ESINDEXER_METRICS_PORT" in str(raised.value)
    finally:
        first.stop()


def test_a_standby_is_not_ready_and_says_why_alone():
    m = Metrics()
    m.set_standby(True)
    ready, reasons = HealthServer(m, es_check=lambda: None).readiness()
    assert not ready and len(reasons) == 1 and reasons[0].startswith("standby: ")
    m.set_standby(False)
    assert not any(r.startswith("standby") for r in HealthServer(m).readiness()[1])


def test_a_stopping_service_is_not_ready_and_says_why_alone():
    """Issue 26.1: /readyz said "ready" while the process ignored its stop for minutes."""
    m = caught_up_metrics()
    stopping = {"now": False}
    server = HealthServer(m, es_check=lambda: None, stopping=lambda: stopping["now"])
    assert server.readiness()[0]
    stopping["now"] = True
    ready, reasons = server.readiness()
    assert not ready and len(reasons) == 1 and reasons[0].startswith("stopping: ")


# -- readiness rules ---------------------------------------------------------------------


def test_stalled_only_when_behind_and_idle():
    m = Metrics()
    old, new = make_tid(2026, 2, 28, 23), make_tid(2026, 3, 1, 1)
    m.record_source_latest(new)
    m.record_progress(old, wall_time=time.time() - 1000)
    health = HealthServer(m, stall_after=300)
    ready, reasons = health.readiness()
    assert not ready
    assert len(reasons) == 1 and reasons[0].startswith("stalled: lag 7200s")

    # Behind but progressing recently: busy, not stalled.
    m.record_progress(old)
    assert health.readiness() == (True, [])

    # Idle for long but caught up: nothing to do, not stalled.
    m.record_progress(new, wall_time=time.time() - 1000)
    assert health.readiness() == (True, [])

    # The limit is configurable.
    m.record_progress(old, wall_time=time.time() - 1000)
    assert HealthServer(m, stall_after=5000).readiness() == (True, [])


def test_never_progressed_counts_idle_time_from_start(monkeypatch):
    m = Metrics()
    m.record_source_latest(make_tid(2026, 3, 1))
    health = HealthServer(m, stall_after=300)
    assert health.readiness() == (True, [])  # just started: not stalled yet
    monkeypatch.setattr(m, "seconds_since_start", lambda: 301.0)
    ready, reasons = health.readiness()
    assert not ready and reasons[0].startswith("stalled")


def test_a_database_behind_the_index_is_not_ready_until_repaired():
    m = caught_up_metrics()
    health = HealthServer(m)
    assert health.readiness() == (True, [])
    m.set_database_behind(True)
    ready, reasons = health.readiness()
    assert not ready and reasons == [
        "database behind the index: it went back in time (restored from a backup?) and searches show "
        "states it no longer has until the repair ends (see the log)"]
    assert b"esindexer_database_behind_index 1.0" in generate_latest(m.registry)
    m.set_database_behind(False)
    assert health.readiness() == (True, [])
    assert b"esindexer_database_behind_index 0.0" in generate_latest(m.registry)


def test_stale_source_poll_is_not_ready():
    m = caught_up_metrics()
    m.record_source_latest(make_tid(2026, 11, 27, 9, 0), wall_time=time.time() - 500)
    ready, reasons = HealthServer(m, source_stale_after=120).readiness()
    assert not ready and reasons[0].startswith("PostgreSQL: no successful poll for")


def test_es_check_result_is_cached():
    calls = []

    def check() -> None:
        calls.append(1)
        raise ConnectionError("refused")

    health = HealthServer(caught_up_metrics(), es_check=check, es_check_ttl=60)
    for _ in range(5):
        ready, reasons = health.readiness()
        assert not ready and reasons == ["Elasticsearch unreachable: ConnectionError: refused"]
    assert len(calls) == 1
    health_no_cache = HealthServer(caught_up_metrics(), es_check=check, es_check_ttl=0)
    health_no_cache.readiness()
    health_no_cache.readiness()
    assert len(calls) == 3


def test_readiness_with_real_elasticsearch(es_url, serve):
    server = serve(caught_up_metrics(), es_check=es_check_for(es_url))
    assert get(server, "/readyz")[:3:2] == (200, b"ready\n")


def test_not_ready_when_elasticsearch_is_unreachable(serve):
    server = serve(caught_up_metrics(), es_check=es_check_for(f"http://127.0.0.1:{closed_port()}"))
    status, _, body = get(server, "/readyz")
    assert status == 503
    assert body.startswith(b"Elasticsearch unreachable: ConnectionError")
    assert get(server, "/healthz")[0] == 200  # alive, just not ready


def test_a_stall_shows_the_last_retry_as_its_likely_cause():
    m = Metrics()
    old, new = make_tid(2026, 2, 28, 23), make_tid(2026, 3, 1, 1)
    m.record_source_latest(new)
    m.record_retry("item_429", "2 item(s) to retry: 429")
    assert HealthServer(m, stall_after=300).readiness() == (True, [])  # a retry alone is not a reason
    m.record_progress(old, wall_time=time.time() - 1000)
    m.record_retry("item_index_closed", "1 item(s) to retry: index_closed; index zodb-objects unwritable: "
                                        "open it (POST /zodb-objects/_open)")
    ready, reasons = HealthServer(m, stall_after=300).readiness()
    assert not ready and reasons[0].startswith("stalled:")
    assert reasons[1].startswith("last retry 0s ago: item_index_closed: 1 item(s) to retry")
    assert "POST /zodb-objects/_open" in reasons[1]
