"""Offline checks of the deployment files, and the demo writer against real PostgreSQL.

No Docker engine runs the stack here, so everything a broken deployment would only
reveal at ``docker compose up`` time is checked statically instead: the compose file
against the compose-spec schema plus the rules no validator enforces (a
``service_healthy`` target without a healthcheck), versions against
deploy/versions.env, the Dockerfile's user and health check, the Kibana saved objects,
the import script against a stand-in Kibana, and the Prometheus rules with the real
promtool (``promtool test rules`` exercises every alert).

``fast_rules()`` is for end-to-end tests against a real Prometheus: it writes a copy of
the rules with short ``for:`` durations instead of keeping a second rules file.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml

from tests.support import require_services

REPO = Path(__file__).resolve().parent.parent
PROM_DIR = REPO / "deploy" / "prometheus"
RULES = PROM_DIR / "rules.yml"
RULES_TEST = PROM_DIR / "rules_test.yml"
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
KIBANA_OBJECTS = REPO / "deploy" / "kibana" / "objects.ndjson"
KIBANA_SETUP = REPO / "deploy" / "kibana" / "setup.sh"
WRITER = REPO / "deploy" / "demo" / "writer.py"
OPERATIONS_DOC = REPO / "docs" / "operations.md"
DEPLOY_DOC = REPO / "docs" / "deploy.md"

# `${NAME}`, `${NAME:-default}`, `${NAME-default}` in the compose file.
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


# --- helpers ------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    """deploy/versions.env as a dict (the one place server versions are pinned)."""
    out = {}
    for line in (REPO / "deploy" / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def env_example() -> dict[str, str]:
    """The assignments in .env.example (comments ignored)."""
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate_defaults(text: str) -> str:
    """Resolve ``${VAR:-default}`` to its default: what compose does with no .env."""
    return INTERPOLATION.sub(lambda m: m.group(3) or "", text)


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``depends_on`` in either form (list of names, or mapping with conditions)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def promtool() -> str:
    path = os.environ.get("ESIT_PROMTOOL") or shutil.which("promtool")
    if not path:
        message = "promtool is not available; start the servers with `eval \"$(scripts/services up)\"`"
        if require_services():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def markdown_anchors(path: Path) -> set[str]:
    """GitHub-style anchors of a Markdown file's headings, plus explicit ``<a id=...>``."""
    text = path.read_text()
    anchors = set(re.findall(r'<a (?:id|name)="([^"]+)"', text))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def fast_rules(dest_dir: Path, for_: str = "2s", interval: str = "1s",
               expr_replace: dict[str, str] | None = None) -> Path:
    """Copy rules.yml into ``dest_dir`` with every ``for:`` set to ``for_`` (when it was
    non-zero) and each group evaluated every ``interval``; return the new file's path.

    For end-to-end tests with a real Prometheus: the alert expressions and thresholds
    stay exactly those of the shipped rules, only the waiting is shortened. Thresholds
    that are themselves durations (EsindexerStalled's ``> 300`` seconds without
    progress) can be rewritten with ``expr_replace={"> 300": "> 3"}``; each key must
    occur in some expression, so a stale replacement fails loudly.
    """
    data = yaml.safe_load(RULES.read_text())
    unused = dict(expr_replace or {})
    for group in data["groups"]:
        group["interval"] = interval
        for rule in group["rules"]:
            if rule.get("for") not in (None, "0", "0s", "0m"):
                rule["for"] = for_
            for old, new in (expr_replace or {}).items():
                if old in rule["expr"]:
                    rule["expr"] = rule["expr"].replace(old, new)
                    unused.pop(old, None)
    if unused:
        raise ValueError(f"fast_rules: {sorted(unused)} found in no rule expression")
    dest = Path(dest_dir) / "rules.yml"
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


# --- Prometheus ---------------------------------------------------------------------------


def test_promtool_check_rules_is_clean() -> None:
    result = run([promtool(), "check", "rules", "--lint-fatal", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    result = run([promtool(), "test", "rules", str(RULES_TEST)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config() -> None:
    # rule_files are relative to prometheus.yml, so this also checks rules.yml is found.
    result = run([promtool(), "check", "config", str(PROM_DIR / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_prometheus_scrapes_the_job_the_alerts_select() -> None:
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["esindexer"]["static_configs"][0]["targets"] == ["esindexer:9650"]
    assert 'job="esindexer"' in RULES.read_text()


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def test_every_alert_has_severity_runbook_and_annotations() -> None:
    anchors = markdown_anchors(OPERATIONS_DOC)
    names = [a["alert"] for a in alerts()]
    assert {"EsindexerDown", "EsindexerAbsent", "EsindexerLagHigh", "EsindexerStalled",
            "EsindexerDeadLetters", "EsindexerErrorBudgetExhausted"} <= set(names)
    for alert in alerts():
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}, alert["alert"]
        ann = alert["annotations"]
        assert ann["summary"].strip() and len(ann["description"]) > 80, alert["alert"]
        path, _, anchor = ann["runbook_url"].partition("#")
        assert path == "docs/operations.md", alert["alert"]
        assert anchor == alert["alert"].lower() and anchor in anchors, (
            f"{alert['alert']}: runbook anchor #{anchor} missing from docs/operations.md")


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    cases: dict[str, list[bool]] = {}
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    for alert in alerts():
        outcomes = cases.get(alert["alert"], [])
        assert True in outcomes and False in outcomes, (
            f"{alert['alert']} needs a test where it fires and one where it does not")


def test_fast_rules_copy_is_valid_and_short(tmp_path: Path) -> None:
    path = fast_rules(tmp_path)
    result = run([promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    copied = yaml.safe_load(path.read_text())["groups"][0]
    assert copied["interval"] == "1s"
    assert {r.get("for") for r in copied["rules"]} <= {None, "2s"}
    assert [r["expr"] for r in copied["rules"]] == [r["expr"] for r in alerts()]


def test_fast_rules_can_shorten_duration_thresholds(tmp_path: Path) -> None:
    path = fast_rules(tmp_path, expr_replace={"> 300": "> 3"})
    stalled = next(r for r in yaml.safe_load(path.read_text())["groups"][0]["rules"]
                   if r["alert"] == "EsindexerStalled")
    assert "esindexer_last_progress_timestamp_seconds > 3)" in stalled["expr"]
    assert run([promtool(), "check", "rules", str(path)]).returncode == 0
    with pytest.raises(ValueError):
        fast_rules(tmp_path, expr_replace={"> 12345": "> 1"})


# --- docker compose -------------------------------------------------------------------------


def test_compose_matches_the_compose_spec_schema() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    cmd = [str(checker)] if checker.exists() else [shutil.which("check-jsonschema") or "check-jsonschema"]
    result = run(cmd + ["--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_opensearch_override_matches_the_schema_and_follows_versions_env() -> None:
    """docker-compose.opensearch.yml (docs/opensearch.md): valid, loopback ports, pinned version."""
    override_file = REPO / "docker-compose.opensearch.yml"
    checker = Path(sys.executable).with_name("check-jsonschema")
    cmd = [str(checker)] if checker.exists() else [shutil.which("check-jsonschema") or "check-jsonschema"]
    result = run(cmd + ["--builtin-schema", "vendor.compose-spec", str(override_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    override = yaml.safe_load(override_file.read_text())
    services = override["services"]
    pinned = versions()["OPENSEARCH_VERSION"]
    assert interpolate_defaults(services["opensearch"]["image"]) == f"opensearchproject/opensearch:{pinned}"
    assert interpolate_defaults(services["opensearch-dashboards"]["image"]) == (
        f"opensearchproject/opensearch-dashboards:{pinned}")
    for name, service in services.items():
        assert all(port.startswith("127.0.0.1:") for port in service.get("ports", [])), name
        for dep in depends_on(service):
            assert dep in services or dep in compose()["services"], f"{name} depends on undefined {dep}"
    assert services["esindexer"]["environment"]["ESINDEXER_SEARCH_ENGINE"] == "opensearch"


def test_compose_with_docker_compose_when_installed(tmp_path: Path) -> None:
    """The most faithful check, when Debian's docker-compose (1.29) happens to be installed."""
    binary = shutil.which("docker-compose")
    if not binary:
        pytest.skip("docker-compose is not installed (check-jsonschema covers the schema)")
    result = run([binary, "-f", str(COMPOSE), "config", "-q"], cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_avoids_what_docker_compose_1_29_rejects() -> None:
    data = compose()
    assert not {"version", "name", "include"} & set(data), "top-level version/name/include"
    for name, service in data["services"].items():
        assert "start_interval" not in (service.get("healthcheck") or {}), name
        for dep, spec in depends_on(service).items():
            assert not {"restart", "required"} & set(spec), f"{name} -> {dep}"


def test_compose_dependencies_exist_and_are_waitable() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for dep, spec in depends_on(service).items():
            assert dep in services, f"{name} depends on undefined service {dep}"
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} healthy: no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} must be one-shot"


def test_compose_long_running_services_have_healthchecks() -> None:
    for name in ("postgres", "elasticsearch", "kibana", "prometheus", "esindexer", "alertmanager", "alert-log"):
        test = compose()["services"][name]["healthcheck"]["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL"), name


def test_compose_ports_are_loopback_only_and_volumes_named() -> None:
    data = compose()
    for name, service in data["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith("."):
                assert source in data["volumes"], f"{name}: volume {source} not declared"
    for name in ("postgres", "elasticsearch"):
        assert any(not v.startswith(".") for v in data["services"][name]["volumes"]), name


def test_compose_image_versions_follow_versions_env() -> None:
    services = compose()["services"]
    pinned = versions()

    def image(name: str) -> str:
        return interpolate_defaults(services[name]["image"])

    assert image("elasticsearch") == (
        f"docker.elastic.co/elasticsearch/elasticsearch:{pinned['ELASTICSEARCH_VERSION']}")
    assert image("kibana") == f"docker.elastic.co/kibana/kibana:{pinned['ELASTICSEARCH_VERSION']}"
    assert image("postgres") == f"postgres:{pinned['POSTGRES_MAJOR']}"
    # Prometheus 3.x changed PromQL semantics; the rules are tested with promtool 2.x.
    assert re.fullmatch(r"prom/prometheus:v2\.\d+\.\d+", image("prometheus")), image("prometheus")
    example = env_example()
    assert example["ELASTICSEARCH_VERSION"] == pinned["ELASTICSEARCH_VERSION"]
    assert example["POSTGRES_MAJOR"] == pinned["POSTGRES_MAJOR"]


def test_compose_alertmanager_is_wired_to_prometheus_and_the_receiver() -> None:
    services = compose()["services"]
    manager = services["alertmanager"]
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in manager["volumes"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in manager["command"]
    assert "--cluster.listen-address=" in manager["command"]  # one instance: no gossip port
    version = re.fullmatch(r"prom/alertmanager:v0\.(\d+)\.\d+", interpolate_defaults(manager["image"]))
    assert version and int(version.group(1)) >= 22, manager["image"]  # matchers syntax
    assert any(port.endswith(":9093") for port in manager["ports"])
    # Prometheus reaches it by its compose service name and container port.
    prometheus = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    targets = [target for am in prometheus["alerting"]["alertmanagers"]
               for static in am["static_configs"] for target in static["targets"]]
    assert targets == ["alertmanager:9093"]
    # Every receiver posts to alert-log, on the port its command listens on.
    alert_log = services["alert-log"]
    command = alert_log["command"]
    assert command[:2] == ["python", "/alertmanager/webhook_log.py"]
    assert "./deploy/alertmanager:/alertmanager:ro" in alert_log["volumes"]
    port = command[command.index("--port") + 1]
    receivers = yaml.safe_load((REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text())["receivers"]
    urls = [hook["url"] for receiver in receivers for hook in receiver["webhook_configs"]]
    assert urls and all(url.startswith(f"http://alert-log:{port}/") for url in urls), urls
    health = alert_log["healthcheck"]["test"]
    assert health[:3] == ["CMD", "python", "-c"] and f":{port}/" in health[3]
    compile(health[3], "<alert-log healthcheck>", "exec")


def test_compose_builds_existing_dockerfile_targets() -> None:
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), flags=re.M | re.I))
    for name, service in compose()["services"].items():
        if "build" in service:
            assert service["build"]["target"] in stages, name


def test_env_example_documents_every_variable_compose_reads() -> None:
    text = COMPOSE.read_text()
    example = env_example()
    example_text = ENV_EXAMPLE.read_text()
    for match in INTERPOLATION.finditer(text):
        var, default = match.group(1), match.group(3) or ""
        assert var in example, f"{var} is used by docker-compose.yml but not in .env.example"
        assert example[var] == default, f"{var}: .env.example says {example[var]!r}, compose {default!r}"
    environment = compose()["services"]["esindexer"]["environment"]
    for var in environment:
        assert var in example_text, f"{var} is not mentioned in .env.example"


def test_compose_passes_only_settings_esindexer_knows() -> None:
    """esindexer refuses unknown ESINDEXER_* variables, so a typo here would crash-loop."""
    from esindexer.config_table import SETTINGS

    known = {s.env for s in SETTINGS}
    environment = compose()["services"]["esindexer"]["environment"]
    assert set(environment) <= known, set(environment) - known
    assert environment["ESINDEXER_METRICS_HOST"] == "0.0.0.0"
    assert str(environment["ESINDEXER_METRICS_PORT"]) == "9650"
    required = {s.env for s in SETTINGS if s.required}
    assert required <= set(environment)


def test_deploy_doc_describes_every_env_example_setting() -> None:
    doc = DEPLOY_DOC.read_text()
    missing = [var for var in env_example() if f"`{var}`" not in doc]
    assert not missing, f"docs/deploy.md does not describe {missing}"


# --- Dockerfile -----------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions per stage name (continuation lines joined); unnamed stages get "#n"."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, flags=re.I):
            current = match.group(2) or f"#{len(stages)}"
            stages[current] = [line]
        elif current is not None:
            stages[current].append(line)
    return stages


def test_dockerfile_runtime_is_non_root_with_readyz_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, flags=re.M)
    stages = dockerfile_stages()
    runtime = stages["runtime"]
    users = [line.split(None, 1)[1] for line in runtime if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    health = [line for line in runtime if line.upper().startswith("HEALTHCHECK ")]
    assert health and "/readyz" in health[0]
    assert 'EXPOSE 9650' in runtime
    assert 'ENTRYPOINT ["esindexer"]' in runtime and 'CMD ["run"]' in runtime
    assert any("pip install ." in line for line in stages["build"])
    assert "demo" in stages
    # A plain `docker build .` must give the service, not the demo image.
    last = list(stages.values())[-1]
    assert re.fullmatch(r"FROM runtime", last[0], flags=re.I), last[0]


def test_dockerfile_healthcheck_one_liner_is_valid_python() -> None:
    health = next(line for line in dockerfile_stages()["runtime"] if line.startswith("HEALTHCHECK"))
    exec_form = json.loads(health[health.index("CMD") + 3:].strip())
    assert exec_form[:2] == ["python", "-c"]
    compile(exec_form[2], "<healthcheck>", "exec")
    compose_check = compose()["services"]["esindexer"]["healthcheck"]["test"]
    assert compose_check[:3] == ["CMD", "python", "-c"]
    compile(compose_check[3], "<compose healthcheck>", "exec")


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    entries = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".env"):
        assert entry in entries
    # The build needs these; ignoring them would break `pip install .` or the demo.
    for needed in ("pyproject.toml", "README.md", "esindexer", "deploy"):
        assert needed not in entries


# --- Kibana ---------------------------------------------------------------------------------

JSON_STRING_ATTRIBUTES = {
    "index-pattern": ("fieldAttrs", "fieldFormatMap", "fields", "runtimeFieldMap", "sourceFilters", "typeMeta"),
    "visualization": ("visState", "uiStateJSON"),
    "dashboard": ("panelsJSON", "optionsJSON"),
}


def kibana_objects() -> list[dict[str, Any]]:
    lines = [line for line in KIBANA_OBJECTS.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def test_kibana_objects_are_well_formed() -> None:
    objects = kibana_objects()
    keys = [(o["type"], o["id"]) for o in objects]
    assert len(keys) == len(set(keys)), "duplicate (type, id)"
    for obj in objects:
        assert obj["id"] and isinstance(obj["attributes"], dict), obj
        for name in JSON_STRING_ATTRIBUTES.get(obj["type"], ()):
            value = obj["attributes"][name]
            assert isinstance(value, str), f"{obj['id']}: {name} must be a JSON string"
            json.loads(value)
        meta = obj["attributes"].get("kibanaSavedObjectMeta")
        if meta:
            json.loads(meta["searchSourceJSON"])
        for ref in obj.get("references", []):
            assert (ref["type"], ref["id"]) in keys, f"{obj['id']}: dangling reference {ref}"
        if "indexRefName" in (meta or {}).get("searchSourceJSON", ""):
            ref_name = json.loads(meta["searchSourceJSON"])["indexRefName"]
            assert ref_name in {r["name"] for r in obj["references"]}, obj["id"]


def test_kibana_data_view_targets_the_alias_and_commit_time() -> None:
    from esindexer.config_table import SETTINGS_BY_NAME

    views = [o for o in kibana_objects() if o["type"] == "index-pattern"]
    assert len(views) == 1
    attributes = views[0]["attributes"]
    # The alias users query is named exactly the index prefix.
    assert attributes["title"] == SETTINGS_BY_NAME["index_prefix"].default == "zodb"
    assert attributes["timeFieldName"] == "committed_at"


def test_kibana_saved_search_shows_recent_changes() -> None:
    search = next(o for o in kibana_objects() if o["type"] == "search")
    assert search["attributes"]["sort"] == [["committed_at", "desc"]]
    # the typed model's title next to the class and commit time (docs/documents.md)
    assert search["attributes"]["columns"] == ["class", "state.title", "committed_at"]


def test_kibana_dashboard_panels_resolve() -> None:
    objects = kibana_objects()
    dashboard = next(o for o in objects if o["type"] == "dashboard")
    refs = {r["name"]: r for r in dashboard["references"]}
    for panel in json.loads(dashboard["attributes"]["panelsJSON"]):
        ref = refs[f"{panel['panelIndex']}:{panel['panelRefName']}"]
        assert ref["type"] == panel["type"]
    for vis in (o for o in objects if o["type"] == "visualization"):
        fields = {a["params"].get("field") for a in json.loads(vis["attributes"]["visState"])["aggs"]}
        assert fields - {None} <= {"class", "committed_at"}, vis["id"]


class _FakeKibana(http.server.BaseHTTPRequestHandler):
    """Answers /api/status and /api/saved_objects/_import like Kibana, as the test says."""

    status_body = b'{"status":{"overall":{"level":"available"}}}'
    import_body = b'{"success":true,"successCount":5,"successResults":[],"warnings":[]}'
    seen: list[tuple[str, dict[str, str], bytes]] = []

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(200 if b"available" in self.status_body else 503, self.status_body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append((self.path, dict(self.headers), body))
        self._reply(200, self.import_body)


@pytest.fixture
def fake_kibana() -> Iterator[tuple[str, type[_FakeKibana]]]:
    handler = type("Handler", (_FakeKibana,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def run_setup(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    return run(["sh", str(KIBANA_SETUP)], env={**os.environ, "KIBANA_URL": url, **env})


def test_kibana_setup_imports_with_overwrite_and_xsrf(fake_kibana) -> None:
    url, handler = fake_kibana
    result = run_setup(url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "imported 5 objects" in result.stdout
    (path, headers, body), = handler.seen
    assert path == "/api/saved_objects/_import?overwrite=true"
    assert "kbn-xsrf" in {k.lower() for k in headers}
    assert KIBANA_OBJECTS.read_bytes().strip() in body


def test_kibana_setup_fails_when_import_reports_errors(fake_kibana) -> None:
    url, handler = fake_kibana
    handler.import_body = (b'{"success":false,"successCount":0,"errors":[{"id":"esindexer-overview",'
                           b'"type":"dashboard","error":{"type":"missing_references"}}]}')
    result = run_setup(url)
    assert result.returncode == 1
    assert "missing_references" in result.stderr


def test_kibana_setup_gives_up_when_kibana_never_becomes_available(fake_kibana) -> None:
    url, handler = fake_kibana
    handler.status_body = b'{"status":{"overall":{"level":"unavailable"}}}'
    result = run_setup(url, KIBANA_WAIT_SECONDS="0")
    assert result.returncode == 1
    assert "not available" in result.stderr
    assert handler.seen == []


def test_kibana_setup_is_posix_sh() -> None:
    # The curl image has no bash.
    assert KIBANA_SETUP.read_text().startswith("#!/bin/sh\n")
    result = run(["sh", "-n", str(KIBANA_SETUP)])
    assert result.returncode == 0, result.stderr


# --- demo writer (real PostgreSQL + RelStorage) ------------------------------------------------


def run_writer(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DEMO_PG_DSN", "DEMO_SEED", "DEMO_INTERVAL")}
    return run([sys.executable, str(WRITER), "--dsn", dsn, *args], env=env, cwd="/")


def object_rows(dsn: str) -> list[bytes]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT state FROM object_state")
        rows = [bytes(row[0]) for row in cur.fetchall()]
    conn.close()
    return rows


def test_demo_writer_once_creates_the_site(db_dsn: str) -> None:
    result = run_writer(db_dsn, "--once", "--seed", "7", "--documents", "12")
    assert result.returncode == 0, result.stderr
    rows = object_rows(db_dsn)
    # root, site, users folder + 6 users, content folder + 4 folders, catalog, 12 documents
    assert len(rows) == 1 + 1 + 7 + 5 + 1 + 12
    # Classes are pickled under their stable module path, never as __main__.
    pickled = b"".join(rows)
    for name in (b"Document", b"Folder", b"User", b"Site"):
        assert b"esindexer_demo.content\n" + name in pickled
    assert b"BTrees.OOBTree\nOOBTree" in pickled
    assert b"__main__" not in pickled
    # A second --once leaves existing content alone.
    again = run_writer(db_dsn, "--once", "--documents", "12")
    assert again.returncode == 0 and "already present" in again.stderr
    assert len(object_rows(db_dsn)) == len(rows)


def test_demo_writer_keeps_changing_and_packs(db_dsn: str) -> None:
    assert run_writer(db_dsn, "--once", "--seed", "3").returncode == 0
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT max(tid) FROM object_state")
        before = cur.fetchone()[0]
    conn.close()
    result = run_writer(db_dsn, "--seed", "3", "--count", "8", "--interval", "0", "--pack-every", "4")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("packed with garbage collection") == 2
    changes = re.findall(r"writer: (added|edited|deleted|renamed) ", result.stderr)
    assert len(changes) == 8
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM object_state WHERE tid > %s", (before,))
        assert cur.fetchone()[0] > 0
    conn.close()


def test_demo_writer_needs_a_database() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DEMO_PG_DSN", "ESINDEXER_PG_DSN")}
    result = run([sys.executable, str(WRITER), "--once"], env=env)
    assert result.returncode == 2 and "no database" in result.stderr
