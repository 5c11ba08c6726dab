"""Command line: ``esindexer`` / ``python -m esindexer``.

Every setting can be given as a flag, an environment variable (``ESINDEXER_*``)
or in a TOML file (``--config``); flags win over the environment, which wins
over the file. ``esindexer config`` shows the result with secrets redacted.

Exit codes: 0 done (stopped by a signal, or caught up with ``--until-caught-up``);
1 unexpected error (``verify``: differences remain; ``dead-letters --redeliver``:
some still fail); 2 bad usage or configuration, including what Elasticsearch refuses
for good (credentials, a privilege, the certificate, a missing ingest pipeline);
3 error budget exhausted (too many dead letters); 4 another indexer with the same
client id is running; 5 a server could not be reached (``status``,
``install-trigger``, ``verify``, ``dead-letters``).
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from esindexer import __version__
from esindexer.config import Settings, load_settings
from esindexer.config_table import SETTINGS, describe_settings
from esindexer.errors import EXIT_CODES_HELP, ConfigError, ExitCode, SchemaError, Unreachable
from esindexer.redact import redact

log = logging.getLogger("esindexer")
_BUDGET_GRACE_SECONDS = 20.0

_EPILOG = """\
configuration:
  Each setting is a flag, an environment variable ESINDEXER_<NAME> or a key in the
  TOML file given with --config (or ESINDEXER_CONFIG_FILE); flags win, then the
  environment, then the file. Only ESINDEXER_PG_DSN is required.

examples:
  export ESINDEXER_PG_DSN=postgresql://zodb:secret@db/zodb
  export ESINDEXER_ES_URL=http://localhost:9200
  esindexer run                       # follow for ever; metrics on 127.0.0.1:9650
  esindexer run --until-caught-up     # index what is committed now, then exit
  esindexer status                    # progress, lag and dead letters
  esindexer verify --repair           # compare index and database object by object, fix drift
  esindexer dead-letters              # what could not be indexed, grouped by cause
  esindexer dead-letters --redeliver  # after fixing the cause: index those objects again
  esindexer alias                     # switch the alias to this prefix (re-index without downtime)
  esindexer config                    # the effective settings, secrets redacted

exit codes:
{exit_codes}

documentation: docs/index.md (configuration: docs/configuration.md)
"""


def _settings_parent() -> argparse.ArgumentParser:
    """A parent parser holding one flag per declared setting (default None = not given)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", metavar="FILE", help="TOML file with settings (ESINDEXER_CONFIG_FILE)")
    groups: dict[str, Any] = {}
    for row in describe_settings():
        group = groups.get(row["group"])
        if group is None:
            group = groups[row["group"]] = parent.add_argument_group(f"{row['group']} settings")
        default = "(required)" if row["required"] else f"default: {row['default']}"
        choices = f" one of: {', '.join(row['choices'])};" if row["choices"] else ""
        group.add_argument(row["flag"], dest=row["name"], default=None, metavar="VALUE",
                           # argparse %-formats help texts: a literal % must be doubled
                           help=f"{row['help']}{choices} [{row['env']}; {default}]".replace("%", "%%"))
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esindexer",
        description=(
            "Keep Elasticsearch in step with a ZODB database stored by RelStorage in "
            "PostgreSQL: follow committed transactions, convert each object to JSON, "
            "write versioned bulk upserts and deletes, save progress only after "
            "Elasticsearch accepted them, and export lag metrics for Prometheus."
        ),
        epilog=_EPILOG.format(exit_codes=EXIT_CODES_HELP),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"esindexer {__version__}")
    settings = _settings_parent()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", parents=[settings], help="run the indexing service in the foreground",
                         description="Follow the database and index every committed change until stopped "
                                     "(SIGTERM/SIGINT: finish in-flight bulks, save progress, exit 0; a second "
                                     "signal abandons them).")
    run.add_argument("--until-caught-up", action="store_true",
                     help="exit once everything committed at start is indexed (a backfill)")
    status = sub.add_parser("status", parents=[settings], help="show progress, lag and dead letters",
                            description="Read progress, the newest commit and the dead-letter count from "
                                        "PostgreSQL (Elasticsearch is not contacted).")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub.add_parser("install-trigger", parents=[settings],
                   help="install the change-notification and pack-deletion triggers",
                   description="Install, idempotently, the triggers esindexer uses: NOTIFY on commits "
                               "(low latency) and capture of pack deletions. Run it as a role with DDL "
                               "rights when the indexer's own role has none.")
    verify = sub.add_parser("verify", parents=[settings], help="compare the index with the database; --repair fixes it",
                            description="Walk every current object in zoid order, convert it as the service "
                                        "would, and compare with the indexed documents: missing, stale, "
                                        "ahead (database restored to an earlier point) and orphan documents. "
                                        "Exit 0 when clean (or repaired), 1 when differences remain.")
    verify.add_argument("--repair", action="store_true",
                        help="index missing and stale documents and delete orphans (versioned, safe while "
                             "the service runs)")
    verify.add_argument("--json", action="store_true", help="print JSON instead of text")
    letters = sub.add_parser("dead-letters", parents=[settings],
                             help="summarise dead letters; --redeliver sends them again once fixed",
                             description="Without options: dead letters grouped by kind, class and reason. "
                                         "With --redeliver: for every dead-lettered object, convert its "
                                         "current state with the current settings and index it again "
                                         "(versioned, safe while the service runs); the letters of what "
                                         "settles are deleted. Exit 0 when none is left failing, 1 otherwise.")
    letters.add_argument("--redeliver", action="store_true",
                         help="index the dead-lettered objects again and clear what succeeds")
    letters.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub.add_parser("alias", parents=[settings],
                   help="point the alias at this prefix's indices (the switch of a re-index)",
                   description="Atomically make ESINDEXER_ALIAS (default: the prefix) point at exactly "
                               "the indices of ESINDEXER_INDEX_PREFIX, removing it from any other index: "
                               "the last step of a re-index without downtime (docs/operations.md).")
    config = sub.add_parser("config", parents=[settings], help="print the effective configuration, secrets redacted")
    config.add_argument("--json", action="store_true", help="print JSON instead of KEY=VALUE lines")
    config.add_argument("--reference", action="store_true",
                        help="print the reference of every setting (Markdown, as in docs/configuration.md)")
    return parser


def _load(args: argparse.Namespace) -> Settings:
    cli = {spec.name: getattr(args, spec.name, None) for spec in SETTINGS}
    return load_settings(cli=cli, config_file=args.config)


def _cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    values = settings.redacted()
    if args.json:
        print(json.dumps(values, indent=2, default=list))
    else:
        for spec in SETTINGS:
            value = values[spec.name]
            if isinstance(value, tuple):
                value = ",".join("=".join(v) if isinstance(v, tuple) else v for v in value)
            print(f"{spec.env}={'' if value is None else value}")
    return 0


def _connect(settings: Settings) -> Any:
    import psycopg2

    from esindexer.source import pg

    try:
        return pg.connect(settings, "cli")
    except psycopg2.OperationalError as exc:
        raise Unreachable(f"cannot reach PostgreSQL: {redact(str(exc).strip())}") from None


def _sink(settings: Settings) -> Any:
    """The sink for a one-shot command: a few retries, not the service's "for ever"."""
    from esindexer.es.sink import ElasticsearchSink

    return ElasticsearchSink(dataclasses.replace(settings, retry_attempts=settings.retry_attempts or 5))


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.ops.status import status_lines, status_report

    conn = _connect(settings)
    try:
        report = status_report(conn, settings)
    finally:
        conn.close()
    print(json.dumps(report, indent=2) if args.json else "\n".join(status_lines(report)))
    return 0


def _cmd_install_trigger(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.source import deletions
    from esindexer.source import notify as notification

    conn = _connect(settings)
    try:
        notify = notification.install_trigger(conn)
        conn.commit()
        capture = deletions.install(conn)
    finally:
        conn.close()
    print(f"change notification trigger: {'installed' if notify else 'NOT installed (no privilege)'}")
    print(f"pack deletion trigger:       {'installed' if capture else 'NOT installed (no privilege)'}")
    return 0 if notify and capture else 1


def _cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.es.sink import ElasticsearchSink
    from esindexer.observe.http import HealthServer
    from esindexer.observe.metrics import Metrics
    from esindexer.observe.poller import SourcePoller
    from esindexer.pipeline.indexer import Indexer
    from esindexer.source import pg

    # A native crash (SIGSEGV, SIGABRT) otherwise ends the process without a word: print the
    # Python stack of every thread to stderr first (the crash guard handles the loop).
    faulthandler.enable()
    metrics = Metrics()
    indexer = Indexer(settings, metrics)
    sink = indexer.sink
    assert isinstance(sink, ElasticsearchSink)
    signals = {"count": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        signals["count"] += 1
        indexer.stop(abandon=signals["count"] > 1)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def es_check() -> None:
        # Short timeout: /readyz must answer quickly even when Elasticsearch hangs.
        sink.es.options(request_timeout=3).cluster.health(timeout="2s")

    poller = SourcePoller(lambda: pg.connect(settings, "lag poller"), metrics, interval=settings.lag_poll_interval)
    server = None
    if settings.metrics_port:
        server = HealthServer(metrics, settings.metrics_host, settings.metrics_port, es_check=es_check,
                              stall_after=settings.stall_seconds,
                              source_stale_after=max(120.0, 3 * settings.lag_poll_interval))
        server.start()
        log.info("metrics and health on http://%s:%d/", settings.metrics_host, server.port,
                 extra={"port": server.port})
    poller.start()
    try:
        code = indexer.run(until_caught_up=args.until_caught_up)
        if code == ExitCode.ERROR_BUDGET and server is not None:
            # Stay scrapeable for a moment so Prometheus sees the exhausted budget
            # (and /readyz says why) before the process is gone.
            log.info("keeping /metrics up for %.0fs before exiting", _BUDGET_GRACE_SECONDS)
            indexer.wait_stopped(_BUDGET_GRACE_SECONDS)
        return code
    finally:
        poller.stop()
        if server is not None:
            server.stop()


def _cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.convert.configure import build_jsonifier
    from esindexer.documents import DocumentBuilder
    from esindexer.ops.verify import verify

    conn = _connect(settings)
    sink = _sink(settings)
    try:
        report = verify(conn, sink, DocumentBuilder(settings), build_jsonifier(settings),
                        settings.client_id, repair=args.repair)
    finally:
        conn.close()
        sink.es.close()
    result = report.as_dict()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"objects {report.objects}, documents {report.documents}, repaired {report.repaired}")
        for kind, count in report.counts.items():
            examples = ", ".join(map(str, report.examples[kind]))
            print(f"{kind:<8} {count}" + (f"  (zoids {examples})" if count else ""))
    unrepaired = report.counts["ahead"] if args.repair else sum(report.counts.values())
    return 0 if report.clean or (args.repair and not unrepaired) else 1


def _cmd_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.ops.redeliver import redeliver
    from esindexer.source.deadletters import summary

    conn = _connect(settings)
    try:
        if not args.redeliver:
            groups = summary(conn, settings.client_id)
            if args.json:
                print(json.dumps(groups, indent=2))
            elif not groups:
                print(f"no dead letters for client {settings.client_id}")
            for group in [] if args.json else groups:
                print(f"{group['letters']:>7}  {group['kind']:<13} {group['class_name'] or '-'}  "
                      f"{group['cause']}  (objects {group['objects']}, last {group['last'][:19]})\n"
                      f"         e.g. {group['example']}")
            return 0
        from esindexer.convert.configure import build_jsonifier
        from esindexer.documents import DocumentBuilder
        from esindexer.pipeline.isolate import IsolatedConverter

        sink = _sink(settings)
        # Objects whose letters say "crashed" are converted in a child process: a record that
        # still kills the converter must not kill this command.
        isolated = IsolatedConverter(settings)
        try:
            report = redeliver(conn, DocumentBuilder(settings), build_jsonifier(settings), sink,
                               settings.client_id, isolated=isolated)
        finally:
            isolated.close()
            sink.es.close()
    finally:
        conn.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"objects {report.objects}: indexed {report.indexed}, gone {report.gone}, "
              f"still failing {report.still_failing}; letters cleared {report.letters_cleared}")
        for zoid, reason in report.failures.items():
            print(f"  zoid {zoid}: {reason}")
    return 0 if not report.still_failing else 1


def _cmd_alias(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.es.admin import ensure_indices, switch_alias
    from esindexer.es.client import make_es_client

    es = make_es_client(settings)
    try:
        ensure_indices(es, dataclasses.replace(settings, attach_alias=False))
        removed, added = switch_alias(es, settings)
    finally:
        es.close()
    print(f"alias {settings.alias_name}: now {', '.join(settings.index_for_route(r) for r in settings.route_names())}")
    if removed:
        print(f"  removed from {', '.join(removed)}")
    if added:
        print(f"  added to {', '.join(added)}")
    return 0


_COMMANDS = {
    "run": _cmd_run,
    "alias": _cmd_alias,
    "verify": _cmd_verify,
    "dead-letters": _cmd_dead_letters,
    "status": _cmd_status,
    "install-trigger": _cmd_install_trigger,
    "config": _cmd_config,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return ExitCode.SETUP
    if args.command == "config" and args.reference:
        from esindexer.config_table import render_reference

        print(render_reference())
        return 0
    try:
        settings = _load(args)
    except ConfigError as exc:
        print(f"esindexer: {redact(str(exc))}", file=sys.stderr)
        return ExitCode.SETUP
    from esindexer.observe.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    try:
        return _COMMANDS[args.command](settings, args)
    except KeyboardInterrupt:
        return 0
    except Unreachable as exc:
        print(f"esindexer: {redact(str(exc))}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    except Exception as exc:
        if isinstance(exc, SchemaError):  # reachable, but not a RelStorage database (yet)
            print(f"esindexer: {redact(str(exc))}; is ESINDEXER_PG_DSN the database RelStorage writes to?", file=sys.stderr)
            return ExitCode.SETUP
        from esindexer.es.client import as_setup_error

        if (problem := as_setup_error(exc)) is not None:
            print(f"esindexer: {redact(str(problem))}", file=sys.stderr)
            return ExitCode.SETUP
        log.exception("esindexer %s failed", args.command)
        return 1
