"""deploy/systemd/esindexer.service and its environment file.

The machine runs no systemd as PID 1, so the unit is not started here: ``systemd-analyze
verify`` (Debian's systemd 252) checks it as systemd would load it, ``systemd-analyze
security --offline`` scores its sandbox, and a parser test pins the keys the service's
behaviour depends on (Type=notify is exercised end to end in
tests/observe/test_systemd_notify.py). The environment file is loaded by esindexer's
own configuration check.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from esindexer.config_table import SETTINGS, SETTINGS_BY_NAME
from esindexer.errors import ExitCode

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "systemd" / "esindexer.service"
PARTITION_UNIT = REPO / "deploy" / "systemd" / "esindexer-partition@.service"
#: (the unit file, the unit systemd-analyze checks: an instance of a template)
UNITS = [(UNIT, "esindexer.service"), (PARTITION_UNIT, "esindexer-partition@0-4.service")]
ENV_FILE = REPO / "deploy" / "systemd" / "esindexer.env.example"
OPERATIONS_DOC = REPO / "docs" / "operations.md"


def unit_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """``{section: [(key, value), ...]}`` in file order; keys may repeat, as in systemd."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if match := re.fullmatch(r"\[(\w+)\]", line):
            current = sections.setdefault(match.group(1), [])
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z]+", key), f"not a key=value line: {line}"
        current.append((key, value))
    return sections


def service() -> dict[str, str]:
    """The [Service] keys, the last value winning (as systemd does for scalar keys)."""
    return dict(unit_sections(UNIT.read_text())["Service"])


def seconds(value: str) -> float:
    """A systemd time span such as ``60s``, ``5min``, ``1min 30s``."""
    units = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    return sum(float(n) * units[u or "s"] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value))


def env_file(path: Path = ENV_FILE) -> tuple[dict[str, str], set[str]]:
    """(assignments, names only mentioned in ``#NAME=`` comments) of an EnvironmentFile."""
    active, commented = {}, set()
    for line in path.read_text().splitlines():
        if match := re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line):
            active[match.group(1)] = match.group(2).strip('"')
        elif match := re.fullmatch(r"#([A-Z_][A-Z0-9_]*)=.*", line):
            commented.add(match.group(1))
    return active, commented


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if not path:
        pytest.skip("systemd-analyze is not installed (apt package systemd); the parser tests still run")
    return path


def documented_virtualenv() -> str:
    """Where docs/operations.md ("systemd") installs esindexer: ``python3 -m venv DIR``."""
    section = OPERATIONS_DOC.read_text().split("\n## systemd", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"python3 -m venv (\S+) && (\S+)/bin/pip install esindexer", section)
    assert match and match.group(1) == match.group(2), section[:2000]
    return match.group(1)


@pytest.fixture(params=UNITS, ids=[name for _, name in UNITS])
def installable_unit(request, tmp_path: Path) -> Path:
    """A shipped unit with the documented virtualenv (``/opt/esindexer``) replaced by this
    checkout's, which has the same layout (verify needs the binary to exist)."""
    shipped, name = request.param
    venv = Path(sys.executable).parent.parent
    assert (venv / "bin" / "esindexer").exists(), venv
    text = shipped.read_text()
    documented = documented_virtualenv()
    assert f"ExecStart={documented}/bin/esindexer run" in text  # issue 26.6: /usr/local/bin/esindexer
    path = tmp_path / name  # an instance name for the template: systemd reads the file as that instance
    path.write_text(text.replace(f"{documented}/bin/esindexer", str(venv / "bin" / "esindexer")))
    return path


# --- the unit ------------------------------------------------------------------------------


def test_systemd_analyze_verify_is_clean(installable_unit: Path) -> None:
    result = subprocess.run([systemd_analyze(), "verify", str(installable_unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr


def test_systemd_analyze_security_rates_the_sandbox_ok(installable_unit: Path) -> None:
    result = subprocess.run([systemd_analyze(), "security", "--offline=true", "--no-pager", str(installable_unit)],
                            capture_output=True, text=True, timeout=60)
    if "--offline" in result.stderr:
        pytest.skip(f"this systemd-analyze has no --offline: {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    # systemd's scale: 0 (locked down) to 10 (UNSAFE); below 2 is "OK".
    assert float(match.group(1)) < 2.0, result.stdout


def test_unit_is_notify_type_with_a_dedicated_user_and_restarts() -> None:
    s = service()
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    assert s["ExecStart"].endswith("/esindexer run")
    assert s["User"] == s["Group"] == "esindexer"
    assert s["EnvironmentFile"] == "/etc/esindexer/esindexer.env"
    assert s["Restart"] == "on-failure"
    assert seconds(s["WatchdogSec"]) >= 10  # the service pings every half period
    # Restarting cannot fix bad settings (2) or an exhausted error budget (3).
    assert set(s["RestartPreventExitStatus"].split()) == {str(int(ExitCode.SETUP)), str(int(ExitCode.ERROR_BUDGET))}
    # systemd must not SIGKILL a clean shutdown: in-flight bulks get shutdown_timeout.
    assert seconds(s["TimeoutStopSec"]) > SETTINGS_BY_NAME["shutdown_timeout"].default
    assert s["KillMode"] == "mixed"


def test_unit_is_hardened() -> None:
    s = service()
    expected = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
                "RestrictSUIDSGID": "yes", "SystemCallArchitectures": "native"}
    assert {key: s.get(key) for key in expected} == expected
    assert set(s["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    filters = [v for k, v in unit_sections(UNIT.read_text())["Service"] if k == "SystemCallFilter"]
    assert filters == ["@system-service", "~@privileged"]
    assert "ReadWritePaths" not in s  # esindexer writes no files


def test_unit_orders_after_the_network_and_installs_for_multi_user() -> None:
    sections = unit_sections(UNIT.read_text())
    unit = dict(sections["Unit"])
    assert "network-online.target" in unit["After"].split() and unit["Wants"] == "network-online.target"
    assert dict(sections["Install"]) == {"WantedBy": "multi-user.target"}


def test_unit_parser_rejects_what_systemd_would_not_read() -> None:
    with pytest.raises(AssertionError):
        unit_sections("Type=notify\n")
    with pytest.raises(AssertionError):
        unit_sections("[Service]\nthis is not a key\n")
    assert seconds("1min 30s") == 90 and seconds("60s") == 60 and seconds("5min") == 300


# --- the environment file --------------------------------------------------------------------


def test_env_file_names_only_known_settings_and_every_required_one() -> None:
    active, commented = env_file()
    known = {s.env for s in SETTINGS}
    assert set(active) | commented <= known, (set(active) | commented) - known
    assert {s.env for s in SETTINGS if s.required} <= set(active)


def test_env_file_is_accepted_by_esindexer_config() -> None:
    active, _ = env_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESINDEXER_")} | active
    result = subprocess.run([sys.executable, "-m", "esindexer", "config"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ESINDEXER_PG_DSN=postgresql://esindexer:***@127.0.0.1:5432/zodb" in result.stdout
    assert "ESINDEXER_METRICS_PORT=9650" in result.stdout


def test_every_unit_named_is_a_file_shipped() -> None:
    """Issue 26.6: esindexer.service named "esindexer@.service"; the file is esindexer-partition@.service."""
    shipped = {path.name for path in (REPO / "deploy" / "systemd").glob("*.service")}
    assert shipped == {UNIT.name, PARTITION_UNIT.name}
    texts = [path.read_text() for path in (REPO / "deploy" / "systemd").iterdir()]
    texts += [path.read_text() for path in (REPO / "docs").glob("*.md")] + [(REPO / "README.md").read_text()]
    for text in texts:
        for name in re.findall(r"\b(esindexer[\w-]*@?[\w-]*)\.service\b", text):
            template = re.sub(r"@[\w-]+$", "@", name)
            assert f"{template}.service" in shipped, name


def test_the_partition_unit_is_the_service_unit_plus_its_partition() -> None:
    """Same behaviour, same sandbox; only the partition settings (and the description) differ."""
    plain = unit_sections(UNIT.read_text())
    partition = unit_sections(PARTITION_UNIT.read_text())
    extra = [("EnvironmentFile", "-/etc/esindexer/partition-%i.env"), ("Environment", "ESINDEXER_PARTITION=%I")]
    assert [kv for kv in partition["Service"] if kv not in extra] == plain["Service"]
    assert all(kv in partition["Service"] for kv in extra)
    assert [kv for kv in partition["Unit"] if kv[0] != "Description"] == \
        [kv for kv in plain["Unit"] if kv[0] != "Description"]
    assert partition["Install"] == plain["Install"]


def test_operations_doc_installs_the_files_shipped() -> None:
    doc = OPERATIONS_DOC.read_text()
    section = doc.split("\n## systemd", 1)[1].split("\n## ", 1)[0]
    for needed in ("deploy/systemd/esindexer.service", "deploy/systemd/esindexer.env.example",
                   "/etc/esindexer/esindexer.env", "systemctl enable --now esindexer", "useradd --system"):
        assert needed in section, needed
