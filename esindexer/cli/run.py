"""``esindexer run``: the indexing service in the foreground."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING

from esindexer.cli.common import ALL_GROUPS, Command, tune_gc
from esindexer.cli.exits import failed, finish
from esindexer.config import Settings
from esindexer.errors import Abandoned, AlreadyRunning, ExitCode

if TYPE_CHECKING:
    from esindexer.observe.metrics import Metrics
    from esindexer.pipeline.indexer import Indexer

log = logging.getLogger("esindexer")

#: How long /metrics stays up after the error budget ran out, so Prometheus sees why.
BUDGET_GRACE_SECONDS = 20.0


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--until-caught-up", action="store_true",
                        help="exit once everything committed at start is indexed (a backfill)")
    parser.add_argument("--deadline", type=_seconds, metavar="SECONDS",
                        help="with --until-caught-up (a cron job): stop after SECONDS as SIGTERM would "
                             "(what Elasticsearch acknowledged is saved) and exit 5 if a server could not "
                             "be reached then, 124 if the work was simply not done in time")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


class _Deadline:
    """Stops the indexer after ``seconds``, cancelling its statements until it has stopped."""

    def __init__(self, indexer: Indexer, seconds: float | None, signals: dict[str, int]) -> None:
        self.indexer = indexer
        self.signals = signals
        self.seconds = seconds
        self.reached = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._wait, name="esindexer-deadline", daemon=True)

    def __enter__(self) -> _Deadline:
        if self.seconds is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def _wait(self) -> None:
        if self._done.wait(self.seconds):
            return
        self.reached = True
        self.signals.setdefault("deadline", 1)
        log.warning("deadline of %gs reached: stopping", self.seconds, extra={"deadline_seconds": self.seconds})
        self.indexer.stop()
        while True:
            self.indexer.interrupt()
            if self._done.wait(0.25):
                return


def _run(settings: Settings, args: argparse.Namespace) -> int:
    if args.deadline is not None and not args.until_caught_up:
        print("esindexer: --deadline needs --until-caught-up (a service runs until it is stopped)",
              file=sys.stderr)
        return ExitCode.SETUP
    from esindexer.es.sink import ElasticsearchSink
    from esindexer.observe.metrics import Metrics
    from esindexer.pipeline.indexer import Indexer
    from esindexer.pipeline.signals import SignalWatcher

    # A native crash (SIGSEGV, SIGABRT) otherwise ends the process without a word: print the
    # Python stack of every thread to stderr first (the crash guard handles the loop).
    faulthandler.enable()
    metrics = Metrics()
    from esindexer.ops.restored import service_repair

    indexer = Indexer(settings, metrics, repair=lambda: service_repair(settings))
    assert isinstance(indexer.sink, ElasticsearchSink)
    signals = {"last": 0}
    deadline = _Deadline(indexer, args.deadline, signals)

    def on_signal(signum: int, count: int) -> None:
        # On the signal thread, at once: also while the main thread waits in a statement.
        signals["last"] = signum
        log.info("%s: %s", signal.Signals(signum).name,
                 "stopping (a second signal abandons in-flight work)" if count == 1 else "abandoning in-flight work",
                 extra={"signal": signum})
        indexer.stop(abandon=count > 1)
        indexer.interrupt(abandon=count > 1)

    with SignalWatcher(on_signal, lambda count: indexer.interrupt(abandon=count > 1)) as watcher, deadline:
        try:
            code = _serve(settings, args, indexer, metrics, signals)
        except BrokenPipeError:
            raise  # main(): stdout's reader went away
        except Exception as exc:
            # Reported here as main() would, so that the exit below also follows an error: a
            # sender still waiting for Elasticsearch must not keep the process up after it.
            code = failed(settings, "run", exc)
        else:
            if code == ExitCode.DEADLINE:
                code = _past_deadline(settings, metrics, args.deadline)
        # Decided while the watcher is still installed (see exits.finish).
        return finish(code, watcher.count)


def _serve(settings: Settings, args: argparse.Namespace, indexer: Indexer, metrics: Metrics,
           signals: dict[str, int]) -> int:
    """The service around :meth:`Indexer.run`: the lock, metrics, the poller, systemd."""
    from esindexer.es.sink import ElasticsearchSink
    from esindexer.observe.http import HealthServer
    from esindexer.observe.poller import SourcePoller
    from esindexer.observe.progress import backlog_reporter
    from esindexer.observe.systemd import ServiceNotifier
    from esindexer.source import pg

    sink = indexer.sink
    assert isinstance(sink, ElasticsearchSink)

    def es_check() -> None:
        # Short timeout: /readyz must answer quickly even when Elasticsearch hangs.
        sink.es.options(request_timeout=3).cluster.health(timeout="2s")

    if not settings.standby:
        # A second instance that will exit on the held lock must do so before it binds the
        # metrics port (which the first one may be using) or touches anything.
        try:
            indexer.claim()
        except AlreadyRunning as exc:
            log.error("%s", exc)
            return ExitCode.LOCKED
        except Abandoned:  # stopped while waiting for PostgreSQL
            return _stopped_early(signals) if args.until_caught_up else ExitCode.OK
    poller = SourcePoller(lambda: pg.connect(settings, "lag poller"), metrics, interval=settings.lag_poll_interval)
    # Built even without a port: its readiness also decides when systemd hears READY=1.
    health = HealthServer(metrics, settings.metrics_host, settings.metrics_port, es_check=es_check,
                          stall_after=settings.stall_seconds, stopping=lambda: indexer.stopping,
                          source_stale_after=max(120.0, 3 * settings.lag_poll_interval))
    server = None
    if settings.metrics_port:
        server = health
        server.start()
        log.info("metrics and health on http://%s:%d/", settings.metrics_host, server.port,
                 extra={"port": server.port})
    poller.start()
    # Started = the pipeline holds the client lock and loaded its progress (it records it).
    notifier = ServiceNotifier(health.readiness, started=lambda: metrics.seconds_since_progress() is not None)
    notifier.start()
    reporter = backlog_reporter(settings, metrics, until_caught_up=args.until_caught_up,
                                cancellable=indexer.cancellable)
    tune_gc()
    try:
        code = indexer.run(until_caught_up=args.until_caught_up)
        if reporter is not None:
            # A service's catch-up that ended is summarised already (pipeline_live): a close here is a stop.
            reporter.close(ended="finished" if indexer.caught_up else "stopped")
        if code == ExitCode.ERROR_BUDGET and server is not None:
            # Stay scrapeable for a moment so Prometheus sees the exhausted budget
            # (and /readyz says why) before the process is gone.
            log.info("keeping /metrics up for %.0fs before exiting", BUDGET_GRACE_SECONDS)
            indexer.wait_stopped(BUDGET_GRACE_SECONDS)
        if code == ExitCode.OK and args.until_caught_up and not indexer.caught_up:
            # Stopped before the end: say so in the exit code, or a re-index script would
            # publish a half-built generation.
            return _stopped_early(signals)
        return code
    finally:
        if reporter is not None:
            reporter.close()  # after an error: say what was done (does nothing when closed above)
        notifier.stop()
        poller.stop()
        if server is not None:
            server.stop()


def _past_deadline(settings: Settings, metrics: Metrics, seconds: float) -> ExitCode:
    """The exit code of a backfill its ``--deadline`` stopped: 5 when a server was failing then."""
    last = metrics.last_retry()
    if last is not None and last[0] <= settings.retry_max_seconds + 5:
        print(f"esindexer: gave up at the deadline of {seconds:g}s: a server could not be reached "
              f"(last retry {last[0]:.0f}s before: {last[1]})", file=sys.stderr)
        return ExitCode.UNREACHABLE
    log.warning("not caught up within the deadline of %gs (exit %d); run again to resume from saved progress",
                seconds, int(ExitCode.DEADLINE))
    return ExitCode.DEADLINE


def _stopped_early(signals: dict[str, int]) -> ExitCode:
    """The exit code of a backfill stopped before its end (130 for SIGINT, else 143; DEADLINE when
    its deadline came first, without a signal)."""
    if signals.get("deadline") and not signals["last"]:
        return ExitCode.DEADLINE
    interrupted = ExitCode.INTERRUPTED if signals["last"] == signal.SIGINT else ExitCode.TERMINATED
    log.warning("stopped before catching up (exit %d); run again to resume from saved progress", int(interrupted))
    return interrupted


COMMAND = Command(
    name="run",
    help="run the indexing service in the foreground",
    description="Follow the database and index every committed change until stopped "
                "(SIGTERM/SIGINT: finish in-flight bulks, save progress, exit 0; a second "
                "signal abandons them).",
    groups=ALL_GROUPS,
    run=_run,
    add_arguments=_arguments,
)
