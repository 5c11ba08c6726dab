"""The command line's shape: each subcommand lists the settings it reads, booleans are switches."""

from __future__ import annotations

import subprocess
import sys

import pytest

from esindexer.cli.main import COMMANDS
from esindexer.cli.parser import build_parser


def _help(*argv: str) -> str:
    return subprocess.run([sys.executable, "-m", "esindexer", *argv, "--help"], capture_output=True,
                          text=True, check=True).stdout


def test_status_help_lists_only_what_status_reads():
    text = _help("status")
    assert "--pg-dsn" in text and "--client-id" in text and "--log-level" in text
    for flag in ("--bulk-max-docs", "--es-url", "--metrics-port", "--class-routes", "--batch-limit"):
        assert flag not in text, f"status --help lists {flag}, which status never reads"


def test_run_help_lists_every_setting():
    from esindexer.config_table import SETTINGS

    text = _help("run")
    for spec in SETTINGS:
        assert spec.flag in text


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_every_listed_flag_is_a_setting_the_command_declares(command):
    parser = build_parser(COMMANDS)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    declared = next(c for c in COMMANDS if c.name == command)
    from esindexer.config_table import SETTINGS_BY_NAME

    for action in sub._actions:
        if action.dest in SETTINGS_BY_NAME:
            spec = SETTINGS_BY_NAME[action.dest]
            assert spec.group in declared.groups or spec.name in declared.settings + ("log_format", "log_level")


def test_booleans_are_switches_and_unset_means_not_given():
    parser = build_parser(COMMANDS)
    assert parser.parse_args(["run", "--no-install-triggers"]).install_triggers is False
    assert parser.parse_args(["run", "--install-triggers"]).install_triggers is True
    assert parser.parse_args(["run"]).install_triggers is None  # the environment still applies


def test_a_switch_from_the_command_line_wins_over_the_environment(monkeypatch):
    from esindexer.cli.main import _load

    monkeypatch.setenv("ESINDEXER_PG_DSN", "postgresql://u@h/db")
    monkeypatch.setenv("ESINDEXER_INSTALL_TRIGGERS", "true")
    args = build_parser(COMMANDS).parse_args(["run", "--no-install-triggers"])
    assert _load(args).install_triggers is False
    monkeypatch.setenv("ESINDEXER_INSTALL_TRIGGERS", "false")
    assert _load(build_parser(COMMANDS).parse_args(["run"])).install_triggers is False
