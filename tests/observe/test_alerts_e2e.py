"""The shipped alert rules, evaluated by a real Prometheus against a real running esindexer.

``promtool test rules`` (tests/test_deploy.py) proves the rule logic on synthetic series;
this test proves the rules and the exported metrics fit together: the names, labels and
values that ``python -m esindexer run`` really exports make the alerts fire during an
Elasticsearch outage and resolve once it is over, and a healthy indexer raises none.

The outage is simulated with ``tests.support.TcpProxy`` between esindexer and the shared
Elasticsearch node, which itself keeps running. Prometheus is the Debian 2.x binary
(``ESIT_PROMETHEUS``), on loopback, with a copy of deploy/prometheus/rules.yml
whose ``for:`` durations and duration thresholds are shortened by ``fast_rules()``; the
alert expressions are otherwise the shipped ones.

Run with ``-s`` to see the observed timings.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import pytest
import transaction
import yaml
from persistent import Persistent

from esindexer.source import follow
from esindexer.source.progress import get_progress_tid
from tests.support import TcpProxy, require_services, wait_for
from tests.test_deploy import RULES, fast_rules

#: The rewritten thresholds: lag above 1 s (shipped: 60 s), no progress for 3 s (shipped:
#: 300 s). Every ``for:`` becomes 2 s and rules are evaluated every second.
FAST_THRESHOLDS = {"esindexer_lag_seconds > 60": "esindexer_lag_seconds > 1", "> 300": "> 3"}


class Note(Persistent):
    """Application content, committed through ZODB the way applications do."""

    def __init__(self, text: str):
        self.text = text


def free_port() -> int:
    """A loopback port that was free a moment ago (good enough for a test's own servers)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prometheus_binary() -> str:
    path = os.environ.get("ESIT_PROMETHEUS") or shutil.which("prometheus")
    if not path or not os.access(path, os.X_OK):
        message = "prometheus is not available; start the servers with `eval \"$(scripts/services up)\"`"
        if require_services():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def http_get(url: str, timeout: float = 5.0) -> bytes | None:
    """The body of a GET, or None while the server is not answering (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError):
        return None


def http_status(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def latest_and_progress(db_dsn: str) -> tuple[int, int]:
    with psycopg2.connect(db_dsn) as conn:
        latest, done = follow.latest_tid(conn), get_progress_tid(conn, "esindexer")
    conn.close()
    return latest, done


def caught_up(db_dsn: str) -> bool:
    latest, done = latest_and_progress(db_dsn)
    return latest > 0 and done == latest


def indexed_zoids(es: Any, alias: str) -> set[int]:
    from elasticsearch import NotFoundError

    try:
        es.indices.refresh(index=alias)
        hits = es.search(index=alias, size=1000, query={"match_all": {}}, source=False)["hits"]["hits"]
    except NotFoundError:
        return set()
    return {int(hit["_id"]) for hit in hits}


class Prometheus:
    """A throw-away Prometheus server on loopback, queried over its HTTP API."""

    def __init__(self, binary: str, workdir: Path, target: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = fast_rules(workdir, for_="2s", interval="1s", expr_replace=FAST_THRESHOLDS)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            # The job name is what the rules select on (up{job="esindexer"}).
            "scrape_configs": [{"job_name": "esindexer", "static_configs": [{"targets": [target]}]}],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir,
        )

    def api(self, path: str, **params: str) -> Any:
        """``data`` of a successful API answer, or None (not up yet, or an error)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = http_get(f"{self.url}/api/v1/{path}{query}")
        if body is None:
            return None
        answer = json.loads(body)
        return answer["data"] if answer.get("status") == "success" else None

    def alerts(self) -> dict[str, str]:
        """Active alerts by name → state (``pending`` or ``firing``)."""
        data = self.api("alerts")
        if data is None:
            raise AssertionError(f"Prometheus did not answer /api/v1/alerts; log: {self.log_tail()}")
        return {alert["labels"]["alertname"]: alert["state"] for alert in data["alerts"]}

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it has no result."""
        data = self.api("query", query=expr)
        if not data or not data["result"]:
            return None
        return float(data["result"][0]["value"][1])

    def rules_loaded(self) -> int:
        data = self.api("rules")
        return sum(len(group["rules"]) for group in data["groups"]) if data else 0

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """Ask for a clean shutdown (/-/quit), terminate if that does not work."""
        if self.proc.poll() is None:
            try:
                urllib.request.urlopen(urllib.request.Request(f"{self.url}/-/quit", method="POST"), timeout=5)
            except (urllib.error.URLError, OSError):
                self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@pytest.fixture
def es_proxy(es_url: str) -> Iterator[TcpProxy]:
    target = urlsplit(es_url)
    proxy = TcpProxy(target.hostname, target.port)
    try:
        yield proxy
    finally:
        proxy.close()


def start_indexer(db_dsn: str, es_url: str, es_prefix: str, metrics_port: int, log_path: Path) -> subprocess.Popen:
    """``python -m esindexer run`` with short poll/retry intervals, logging to a file
    (a pipe nobody reads would block the service once it logs a few retries)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESINDEXER_")}
    env.update(
        ESINDEXER_PG_DSN=db_dsn, ESINDEXER_ES_URL=es_url, ESINDEXER_INDEX_PREFIX=es_prefix.rstrip("-"),
        ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_HOST="127.0.0.1", ESINDEXER_METRICS_PORT=str(metrics_port),
        ESINDEXER_LAG_POLL_INTERVAL="0.5", ESINDEXER_POLL_TIMEOUT="1", ESINDEXER_RETRY_MAX_SECONDS="1",
        ESINDEXER_ES_REQUEST_TIMEOUT="3",
    )
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "esindexer", "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)


def test_outage_fires_lag_and_stall_alerts_then_resolves(zodb, db_dsn, es, es_prefix, es_proxy, tmp_path):
    binary = prometheus_binary()
    alias = es_prefix.rstrip("-")
    conn = zodb.open()
    root = conn.root()
    notes = [Note(f"before the outage {n}") for n in range(3)]
    for n, note in enumerate(notes):
        root[f"before{n}"] = note
    transaction.commit()

    metrics_port = free_port()
    indexer_log = tmp_path / "esindexer.log"
    indexer = start_indexer(db_dsn, es_proxy.url, es_prefix, metrics_port, indexer_log)
    prometheus = None
    try:
        # Caught up before Prometheus starts: the very first lag (nothing indexed yet counts
        # as 1900-01-01) is not what this test is about.
        wait_for(lambda: indexer.poll() is not None or caught_up(db_dsn), timeout=60, message="first commit indexed")
        assert indexer.poll() is None, indexer_log.read_text()
        metrics = wait_for(lambda: http_get(f"http://127.0.0.1:{metrics_port}/metrics"), message="/metrics")
        assert b"esindexer_lag_seconds 0.0" in metrics

        prometheus = Prometheus(binary, tmp_path, f"127.0.0.1:{metrics_port}")
        shipped = sum(len(g["rules"]) for g in yaml.safe_load(RULES.read_text())["groups"])
        wait_for(lambda: prometheus.rules_loaded() == shipped, timeout=30, interval=0.2, message="rules loaded")
        wait_for(lambda: prometheus.value('up{job="esindexer"}') == 1, timeout=30, interval=0.2,
                 message="first scrape")
        assert prometheus.value("esindexer_lag_seconds") == 0
        # Healthy and caught up: none of the shipped rules is even pending. (Waited for,
        # not asserted at once: EsindexerAbsent may be pending until the first scrape is in.)
        wait_for(lambda: prometheus.alerts() == {}, timeout=20, interval=0.2, message="no alerts while healthy")

        # Elasticsearch "stops"; the application keeps committing, once a second.
        es_proxy.pause()
        paused_at = time.monotonic()
        during: list[Note] = []
        seen: dict[tuple[str, str], float] = {}  # (alert, state) -> seconds after the pause

        def commit_and_check() -> dict[str, str] | None:
            note = Note(f"during the outage {len(during)}")
            root[f"during{len(during)}"] = note
            transaction.commit()
            during.append(note)
            alerts = prometheus.alerts()
            for name, state in alerts.items():
                seen.setdefault((name, state), time.monotonic() - paused_at)
            return alerts if {"EsindexerLagHigh", "EsindexerStalled"} <= {
                name for name, state in alerts.items() if state == "firing"} else None

        firing = wait_for(commit_and_check, timeout=60, interval=1.0, message="lag and stall alerts firing")
        fired_after = time.monotonic() - paused_at
        assert indexer.poll() is None, indexer_log.read_text()
        lag = prometheus.value("esindexer_lag_seconds")
        assert lag is not None and lag > 1
        # Not blamed on the wrong cause: the indexer is up, the database reachable.
        assert "EsindexerDown" not in firing and prometheus.value("esindexer_source_reachable") == 1
        latest, done = latest_and_progress(db_dsn)
        assert done < latest  # progress frozen while Elasticsearch is away
        # and /readyz says why, in words, down to the retry behind it
        status, body = http_status(f"http://127.0.0.1:{metrics_port}/readyz")
        assert status == 503 and "Elasticsearch unreachable" in body, body
        assert "last retry" in body and "es_unreachable" in body and "Connection refused" in body, body

        es_proxy.resume()
        resumed_at = time.monotonic()
        wait_for(lambda: not {"EsindexerLagHigh", "EsindexerStalled"} & set(prometheus.alerts()),
                 timeout=60, interval=0.2, message="alerts resolved")
        resolved_after = time.monotonic() - resumed_at
        assert caught_up(db_dsn)
        assert prometheus.value("esindexer_lag_seconds") == 0
        expected = {int.from_bytes(n._p_oid, "big") for n in notes + during}
        wait_for(lambda: expected <= indexed_zoids(es, alias), timeout=30, message="every document indexed")
        states = ", ".join(f"{name} {state} after {at:.1f}s" for (name, state), at in sorted(seen.items(), key=lambda i: i[1]))
        print(f"\n[alerts e2e] rules: lag > 1s, no progress > 3s, for: 2s, scrape/eval every 1s. "
              f"After the pause: {states}; both firing after {fired_after:.1f}s "
              f"({len(during)} commits, lag {lag:.1f}s). Resolved {resolved_after:.1f}s after the resume.")
    finally:
        if prometheus is not None:
            prometheus.stop()
        if indexer.poll() is None:
            indexer.send_signal(signal.SIGTERM)
            try:
                indexer.wait(timeout=60)
            except subprocess.TimeoutExpired:
                indexer.kill()
                indexer.wait(timeout=10)
        conn.close()
    assert prometheus.proc.returncode == 0, prometheus.log_tail()
    assert indexer.returncode == 0, indexer_log.read_text()[-3000:]
