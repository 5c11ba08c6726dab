"""deploy/grafana/esindexer.json: parses, names only exported metrics, and its queries answer.

The metric names are taken from what esindexer really exports (a populated ``Metrics``
registry, served by the service's own ``HealthServer``) and must be documented in
docs/metrics.md. Every panel query is then run by a real Prometheus (the Debian 2.x
binary) that scrapes that server, with Grafana's variables filled in as Grafana would:
each must be valid PromQL and return series.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.exposition import generate_latest

from esindexer.observe.http import HealthServer
from esindexer.observe.metrics import Metrics
from tests.observe.support import make_tid
from tests.observe.test_alerts_e2e import free_port, http_get, prometheus_binary
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "esindexer.json"
METRICS_DOC = REPO / "docs" / "metrics.md"
#: Grafana's variables as a user with one indexer selected would have them.
VARIABLES = {"$__rate_interval": "15s", "$job": "esindexer", "$instance": ".+"}
#: Words in a PromQL expression that are not metric names.
PROMQL_WORDS = {"sum", "max", "min", "by", "rate", "histogram_quantile", "time", "le", "job", "instance",
                "action", "outcome", "reason", "on", "and", "or"}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def queries() -> list[str]:
    """Every panel target's and template variable's PromQL."""
    data = dashboard()
    exprs = [target["expr"] for panel in data["panels"] for target in panel["targets"]]
    for variable in data["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(re.fullmatch(r"label_values\((.+), \w+\)", variable["query"]["query"]).group(1))
    return exprs


def fill(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def populated_metrics() -> Metrics:
    """A registry with every series set, as after a few batches of a running service."""
    metrics = Metrics()
    metrics.record_progress(make_tid(2026, 1, 2, 3, 4, 5))
    metrics.record_source_latest(make_tid(2026, 1, 2, 3, 4, 50))
    metrics.set_dead_letters(2)
    metrics.set_crash_guard(False, 0)
    metrics.set_live(True)
    metrics.record_documents("index", "ok", 40)
    metrics.record_bulk("ok", 0.12)
    metrics.record_batch(40)
    metrics.record_retry("es_unreachable", "connection refused")
    return metrics


def exported_names(metrics: Metrics) -> set[str]:
    text = generate_latest(metrics.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def metric_names(expr: str) -> set[str]:
    """Identifiers in ``expr`` that name series (not functions, labels, or label values)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
    words = set(re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", without_ranges))
    return {w for w in words - PROMQL_WORDS if not w.startswith("__")}


def test_dashboard_is_importable_json() -> None:
    data = dashboard()
    assert data["uid"] == "esindexer-overview" and data["title"] == "esindexer"
    assert data["__inputs"][0]["pluginId"] == "prometheus"
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in data["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
    titles = " ".join(p["title"] for p in data["panels"]).lower()
    assert "lag" in titles and "throughput" in titles and "errors" in titles


def test_dashboard_names_only_exported_and_documented_metrics() -> None:
    exported = exported_names(populated_metrics()) | {"up"}  # up: Prometheus' own, per target
    documented = set(re.findall(r"esindexer_[a-z_]+", METRICS_DOC.read_text()))
    used: set[str] = set()
    for expr in queries():
        used |= metric_names(expr)
    assert used, "no metric names found"
    assert used <= exported, f"not exported by esindexer: {sorted(used - exported)}"
    esindexer_names = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used if n.startswith("esindexer_")}
    assert esindexer_names <= documented, f"not in docs/metrics.md: {sorted(esindexer_names - documented)}"
    for name in ("esindexer_lag_seconds", "esindexer_documents_total", "esindexer_retries_total"):
        assert name in used


def test_metric_name_extraction() -> None:
    expr = 'sum by (le) (rate(esindexer_bulk_duration_seconds_bucket{job="x", outcome=~"a|b"}[5m]))'
    assert metric_names(expr) == {"esindexer_bulk_duration_seconds_bucket"}
    assert metric_names("time() - max by (instance) (esindexer_last_progress_timestamp_seconds)") == {
        "esindexer_last_progress_timestamp_seconds"}


@pytest.fixture
def scraped(tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping a real HealthServer (job esindexer); yields its URL."""
    server = HealthServer(populated_metrics(), "127.0.0.1", 0)
    server.start()
    port = free_port()
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
              "scrape_configs": [{"job_name": "esindexer",
                                  "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with open(tmp_path / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.stop()


def query(url: str, expr: str) -> dict[str, Any]:
    from urllib.parse import urlencode

    body = http_get(f"{url}/api/v1/query?{urlencode({'query': expr})}")
    return dict(json.loads(body)) if body else {"status": "unreachable"}


def test_every_dashboard_query_returns_series_from_a_real_prometheus(scraped: str) -> None:
    # rate() over 15s needs two scrapes in the window: wait for the third.
    def scrapes() -> float:
        result = (query(scraped, 'count_over_time(up{job="esindexer"}[15s])').get("data") or {}).get("result")
        return float(result[0]["value"][1]) if result else 0.0

    wait_for(lambda: scrapes() >= 3, timeout=30, interval=0.3, message="three scrapes")
    time.sleep(0.5)
    for expr in queries():
        answer = query(scraped, fill(expr))
        assert answer["status"] == "success", f"{expr}: {answer}"
        assert answer["data"]["result"], f"no series for {fill(expr)}"
