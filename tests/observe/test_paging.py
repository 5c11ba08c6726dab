"""Paging: the shipped Alertmanager configuration, checked by amtool and run for real.

``amtool check-config`` and ``amtool config routes test`` prove the file parses and routes
every shipped alert by its severity. The end-to-end tests start the Debian
``prometheus-alertmanager`` binary on loopback with a copy of
deploy/alertmanager/alertmanager.yml whose receiver URLs point at the shipped demo receiver
(deploy/alertmanager/webhook_log.py, run as a subprocess) and whose waits are shortened to
a second; routes, grouping and inhibition rules are the shipped ones. Alerts reach it
through its API (inhibition of the lag alert by EsindexerDown, and its end), and through a
real Prometheus running the shipped rules and the shipped ``alerting`` section against an
esindexer target that does not answer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observe.test_alerts_e2e import free_port, http_get, prometheus_binary
from tests.support import require_services, wait_for
from tests.test_deploy import OPERATIONS_DOC, PROM_DIR, fast_rules

REPO = Path(__file__).resolve().parents[2]
AM_DIR = REPO / "deploy" / "alertmanager"
AM_CONFIG = AM_DIR / "alertmanager.yml"
WEBHOOK_LOG = AM_DIR / "webhook_log.py"
#: The receiver base URL in the shipped file (the compose service `alert-log`).
SHIPPED_RECEIVER = "http://alert-log:5001"


def tool(env: str, *names: str) -> str:
    """The binary named by ``env`` or found on PATH; fail (CI) or skip when absent."""
    path = os.environ.get(env) or next(filter(None, map(shutil.which, names)), None)
    if not path or not os.access(path, os.X_OK):
        message = f"{names[0]} is not available; start the servers with `eval \"$(scripts/services up)\"`"
        if require_services():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("ESIT_AMTOOL", "amtool"), *args], capture_output=True, text=True, timeout=60)


def shipped_alerts() -> list[dict[str, Any]]:
    rules = yaml.safe_load((PROM_DIR / "rules.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


# --- static: amtool -------------------------------------------------------------------------


def test_amtool_check_config_accepts_the_shipped_file() -> None:
    result = amtool("check-config", str(AM_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "2 inhibit rules" in result.stdout, result.stdout


@pytest.mark.parametrize("alert", shipped_alerts(), ids=lambda a: a["alert"])
def test_every_shipped_alert_routes_by_its_severity(alert: dict[str, Any]) -> None:
    severity = alert["labels"]["severity"]
    expected = {"critical": "esindexer-page", "warning": "esindexer-ticket"}[severity]
    result = amtool("config", "routes", "test", f"--config.file={AM_CONFIG}",
                    f"alertname={alert['alert']}", f"severity={severity}", "job=esindexer")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [expected], result.stdout


def test_other_alerts_fall_through_to_the_default_receiver() -> None:
    result = amtool("config", "routes", "test", f"--config.file={AM_CONFIG}",
                    "alertname=DiskFull", "severity=critical")
    assert result.stdout.split() == ["default"], result.stdout + result.stderr


def test_inhibition_names_real_alerts() -> None:
    """A renamed alert would silently stop inhibiting: every name must exist in rules.yml."""
    names = {a["alert"] for a in shipped_alerts()}
    config = yaml.safe_load(AM_CONFIG.read_text())
    mentioned: set[str] = set()
    for rule in config["inhibit_rules"]:
        assert rule["equal"] == ["job", "instance"]
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            value = re.fullmatch(r'alertname=~?"([^"]+)"', matcher)
            assert value, matcher
            mentioned |= set(value.group(1).split("|"))
    assert mentioned <= names, mentioned - names
    assert {"EsindexerDown", "EsindexerLagHigh", "EsindexerStalled"} <= mentioned


def paging_examples() -> list[str]:
    """The YAML blocks of docs/operations.md's "Paging" section that define receivers."""
    text = OPERATIONS_DOC.read_text()
    section = text.split("\n## Paging", 1)[1].split("\n## ", 1)[0]
    return [block for block in re.findall(r"```yaml\n(.*?)```", section, flags=re.S) if "receivers:" in block]


def test_documented_receiver_examples_pass_amtool(tmp_path: Path) -> None:
    """Each example replaces the shipped file's ``receivers`` (and may add ``global``), as
    the docs say to use them; the result must pass amtool and keep every route's receiver."""
    shipped = yaml.safe_load(AM_CONFIG.read_text())
    names = {receiver["name"] for receiver in shipped["receivers"]}
    examples = paging_examples()
    assert len(examples) >= 3  # webhook, e-mail, Slack
    for n, block in enumerate(examples):
        example = yaml.safe_load(block)
        assert set(example) <= {"global", "receivers"}, block
        assert {receiver["name"] for receiver in example["receivers"]} == names, block
        path = tmp_path / f"example{n}.yml"
        path.write_text(yaml.safe_dump({**shipped, **example}, sort_keys=False))
        result = amtool("check-config", str(path))
        assert result.returncode == 0, f"example {n}:\n{block}\n{result.stdout}{result.stderr}"


def test_webhook_log_prints_one_line_per_alert() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("webhook_log", WEBHOOK_LOG)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    payload = {"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": "EsindexerDown", "severity": "critical", "instance": "x:1"},
         "annotations": {"summary": 'esindexer "x" down'}},
        {"status": "resolved", "labels": {}, "annotations": {}}]}
    assert module.format_alerts("/page", payload) == [
        '/page firing EsindexerDown instance="x:1" severity="critical" summary="esindexer \\"x\\" down"',
        '/page resolved ? summary=""']


def test_webhook_log_refuses_bad_json_and_keeps_serving() -> None:
    hook = WebhookLog()
    try:
        request = urllib.request.Request(hook.url + "/page", data=b"{not json", method="POST")
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(request, timeout=5)
        assert error.value.code == 400
        assert http_get(hook.url + "/") is not None
    finally:
        hook.stop()


# --- end to end: a real Alertmanager delivering to the shipped demo receiver ----------------


class WebhookLog:
    """deploy/alertmanager/webhook_log.py on a free loopback port; its lines collected."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(WEBHOOK_LOG), "--host", "127.0.0.1", "--port", "0"],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        match = re.fullmatch(r"alert-log listening on 127\.0\.0\.1:(\d+)\n", first)
        assert match, first
        self.url = f"http://127.0.0.1:{match.group(1)}"
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def matching(self, pattern: str) -> list[str]:
        return [line for line in list(self.lines) if re.search(pattern, line)]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Alertmanager:
    """The real Alertmanager binary on loopback with a copy of the shipped configuration."""

    def __init__(self, workdir: Path, receiver_url: str) -> None:
        config = yaml.safe_load(AM_CONFIG.read_text())
        self._shorten(config["route"])
        for receiver in config["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                assert hook["url"].startswith(SHIPPED_RECEIVER), hook["url"]
                hook["url"] = receiver_url + hook["url"][len(SHIPPED_RECEIVER):]
        config_path = workdir / "alertmanager.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "alertmanager.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [tool("ESIT_ALERTMANAGER", "prometheus-alertmanager", "alertmanager"),
                 f"--config.file={config_path}", f"--storage.path={workdir / 'am-data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=",
                 "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or http_get(f"{self.url}/-/ready") is not None,
                 timeout=30, interval=0.1, message="alertmanager ready")
        assert self.proc.poll() is None, self.log_path.read_text()

    @classmethod
    def _shorten(cls, route: dict[str, Any]) -> None:
        """Waits of a second instead of minutes; matchers, grouping and receivers unchanged."""
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = "1s"
        for child in route.get("routes", []):
            cls._shorten(child)

    def post(self, *alerts: dict[str, Any]) -> None:
        request = urllib.request.Request(f"{self.url}/api/v2/alerts", data=json.dumps(list(alerts)).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def state(self, alertname: str, instance: str) -> dict[str, Any] | None:
        body = http_get(f"{self.url}/api/v2/alerts")
        for alert in json.loads(body or b"[]"):
            if alert["labels"].get("alertname") == alertname and alert["labels"].get("instance") == instance:
                return dict(alert["status"])
        return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def paging(tmp_path: Path) -> Iterator[tuple[Alertmanager, WebhookLog]]:
    hook = WebhookLog()
    manager = None
    try:
        manager = Alertmanager(tmp_path, hook.url)
        yield manager, hook
    finally:
        if manager is not None:
            manager.stop()
        hook.stop()


def alert(name: str, instance: str, severity: str) -> dict[str, Any]:
    """A firing alert as Prometheus posts it (posting it again with ``endsAt`` now resolves it)."""
    now = datetime.now(UTC)
    ends = now + timedelta(minutes=5)
    return {"labels": {"alertname": name, "job": "esindexer", "instance": instance, "severity": severity},
            "annotations": {"summary": f"{name} on {instance}"},
            "startsAt": (now - timedelta(minutes=1)).isoformat(), "endsAt": ends.isoformat()}


def test_down_pages_and_inhibits_the_lag_alert_of_the_same_indexer(paging) -> None:
    manager, hook = paging
    # In that order, as in an outage (EsindexerDown waits 2 minutes, the lag alert 5): an
    # inhibition only applies once the inhibiting alert has reached Alertmanager.
    down_a = alert("EsindexerDown", "a:9650", "critical")
    manager.post(down_a)
    wait_for(lambda: hook.matching(r'^/page firing EsindexerDown instance="a:9650"'), timeout=30,
             message="EsindexerDown paged")
    manager.post(alert("EsindexerLagHigh", "a:9650", "warning"), alert("EsindexerLagHigh", "b:9650", "warning"))
    wait_for(lambda: hook.matching(r'^/ticket firing EsindexerLagHigh instance="b:9650"'), timeout=30,
             message="the lag of the other indexer ticketed")
    status = manager.state("EsindexerLagHigh", "a:9650")
    assert status and status["state"] == "suppressed" and status["inhibitedBy"], status
    # Three more group intervals: the inhibited alert is still not delivered.
    time.sleep(3.5)
    assert not hook.matching(r'EsindexerLagHigh instance="a:9650"'), hook.lines

    # The indexer is back but still behind: the resolution is paged, the lag now reported.
    manager.post({**down_a, "endsAt": datetime.now(UTC).isoformat()})
    wait_for(lambda: hook.matching(r'^/page resolved EsindexerDown instance="a:9650"'), timeout=30,
             message="EsindexerDown resolved")
    wait_for(lambda: hook.matching(r'^/ticket firing EsindexerLagHigh instance="a:9650"'), timeout=30,
             message="the lag alert delivered once the inhibition ended")
    assert len(hook.matching(r"^/default ")) == 0, hook.lines
    print("\n[paging] " + "\n[paging] ".join(hook.lines))


def test_a_stalled_indexer_is_paged_for_the_stall_not_its_lag(paging) -> None:
    manager, hook = paging
    manager.post(alert("EsindexerStalled", "c:9650", "critical"))
    wait_for(lambda: hook.matching(r'^/page firing EsindexerStalled instance="c:9650"'), timeout=30,
             message="EsindexerStalled paged")
    manager.post(alert("EsindexerLagHigh", "c:9650", "warning"))
    wait_for(lambda: (manager.state("EsindexerLagHigh", "c:9650") or {}).get("state") == "suppressed",
             timeout=10, message="the lag alert suppressed")
    time.sleep(2.5)
    assert not hook.matching("EsindexerLagHigh"), hook.lines


def test_prometheus_with_the_shipped_rules_pages_through_the_shipped_alerting_section(paging, tmp_path) -> None:
    manager, hook = paging
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    # The shipped alerting section, pointed at this Alertmanager instead of the compose service.
    (am,) = config["alerting"]["alertmanagers"]
    assert am["static_configs"][0]["targets"] == ["alertmanager:9093"]
    am["static_configs"][0]["targets"] = [f"127.0.0.1:{manager.port}"]
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: esindexer is down
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(fast_rules(tmp_path, for_="2s", interval="1s"))]
    config["scrape_configs"] = [{"job_name": "esindexer", "static_configs": [{"targets": [dead]}]}]
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    with open(tmp_path / "prometheus.log", "wb") as log:
        prometheus = subprocess.Popen(
            [prometheus_binary(), f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    started = time.monotonic()
    try:
        line = wait_for(lambda: hook.matching(rf'^/page firing EsindexerDown instance="{re.escape(dead)}"'),
                        timeout=60, interval=0.2, message="EsindexerDown paged through Prometheus")
        print(f"\n[paging] via Prometheus after {time.monotonic() - started:.1f}s: {line[0]}")
        assert 'severity="critical"' in line[0] and 'job="esindexer"' in line[0]
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
