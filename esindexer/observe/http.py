"""One small HTTP server for ``/metrics``, ``/healthz`` and ``/readyz``.

Why liveness and readiness differ: ``/healthz`` only proves the process answers, so an
orchestrator restarts a wedged interpreter but not an indexer that is merely waiting
for Elasticsearch. ``/readyz`` says whether indexing can make progress right now, and
it also fails on a *stall* (the source is ahead but no progress was saved for
``stall_after`` seconds), which a process-up check cannot see.

The server is the standard library's ``ThreadingHTTPServer`` in a daemon thread, and
``/metrics`` is served by prometheus-client's own handler (content negotiation, gzip,
``name[]`` filters), so only the routing is written here.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.exposition import MetricsHandler

from esindexer.errors import SetupError
from esindexer.es.client import describe_error
from esindexer.observe.metrics import Metrics

log = logging.getLogger(__name__)

#: The /readyz body of a hot standby (load balancers and probes match on "standby").
STANDBY_REASON = ("standby: another esindexer holds this client id's lock and is indexing; "
                  "this one takes over when that lock is freed")
#: The /readyz body once a stop was asked for (SIGTERM/SIGINT), until the process exits.
STOPPING_REASON = "stopping: a stop was asked for (SIGTERM/SIGINT)"


class _CachedCheck:
    """Runs a check at most once per ``ttl`` seconds; concurrent callers share a result.

    Scrapers and probes may hit ``/readyz`` often; caching keeps them from turning into
    a stream of requests against Elasticsearch.
    """

    def __init__(self, check: Callable[[], None], ttl: float) -> None:
        self._check = check
        self._ttl = ttl
        self._lock = threading.Lock()
        self._at: float | None = None
        self._error: str | None = None

    def __call__(self) -> str | None:
        """``None`` when the check passed, else the reason it failed."""
        with self._lock:
            now = time.monotonic()
            if self._at is None or now - self._at >= self._ttl:
                try:
                    self._check()
                    self._error = None
                except Exception as exc:  # any failure of the check means: not reachable
                    self._error = f"{type(exc).__name__}: {' '.join(describe_error(exc).split())}"
                self._at = time.monotonic()
            return self._error


class HealthServer:
    """HTTP endpoints for Prometheus and for orchestrator probes.

    ``es_check`` raises when Elasticsearch is not usable (it should carry its own short
    timeout); ``None`` leaves Elasticsearch out of readiness. ``source_stale_after``
    makes readiness fail when the source poller has not succeeded for that long (a
    poller hung on a dead socket reports nothing at all).
    """

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 9650,
                 es_check: Callable[[], None] | None = None, stall_after: float = 300.0,
                 *, es_check_ttl: float = 5.0, source_stale_after: float = 120.0,
                 stopping: Callable[[], bool] | None = None) -> None:
        self.metrics = metrics
        self._stopping = stopping
        self.host = host
        self._requested_port = port
        self.stall_after = stall_after
        self.source_stale_after = source_stale_after
        self._es_check = _CachedCheck(es_check, es_check_ttl) if es_check else None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for); the requested one before start."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._requested_port

    def start(self) -> None:
        """Bind and serve in a daemon thread; binding errors surface here, in the caller."""
        if self._server is not None:
            raise RuntimeError("HealthServer already started")
        try:
            server = ThreadingHTTPServer((self.host, self._requested_port), _handler_for(self))
        except OSError as exc:
            problem = _bind_problem(exc, self.host, self._requested_port)
            if problem is None:
                raise
            raise SetupError(problem) from None
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="esindexer-health-http", daemon=True)
        self._thread.start()
        log.info("health server listening", extra={"host": self.host, "port": self.port})

    def stop(self) -> None:
        """Stop serving and release the socket."""
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5.0)

    def readiness(self) -> tuple[bool, list[str]]:
        """``(ready, reasons)``; every failing condition is listed, not just the first."""
        m = self.metrics
        if m.standby():
            # Not an error: another process holds the lock and indexes. Nothing else applies
            # (no progress is expected from this one), so the reason stands alone.
            return False, [STANDBY_REASON]
        if self._stopping is not None and self._stopping():
            return False, [STOPPING_REASON]  # on its way out: nothing else matters
        reasons: list[str] = []
        reachable, error = m.source_status()
        if reachable is None:
            reasons.append("PostgreSQL: not polled yet")
        elif not reachable:
            reasons.append(error or "PostgreSQL unreachable")
        else:
            since_poll = m.seconds_since_source_poll()
            if since_poll is not None and since_poll > self.source_stale_after:
                reasons.append(f"PostgreSQL: no successful poll for {since_poll:.0f}s")
        if self._es_check is not None and (es_error := self._es_check()) is not None:
            reasons.append(f"Elasticsearch unreachable: {es_error}")
        lag = m.lag_seconds()
        idle = m.seconds_since_progress()
        if idle is None:
            idle = m.seconds_since_start()
        if lag > 0 and idle > self.stall_after:
            reasons.append(f"stalled: lag {lag:.0f}s and no progress for {idle:.0f}s "
                           f"(limit {self.stall_after:g}s)")
        if m.error_budget_exhausted():
            reasons.append("error budget exhausted: too many dead-lettered documents")
        if m.database_behind():
            reasons.append("database behind the index: it went back in time (restored from a backup?) and "
                           "searches show states it no longer has until the repair ends (see the log)")
        last = m.last_retry()
        if reasons and last is not None and last[0] <= max(self.stall_after, 60.0):
            # Not a reason by itself (one 429 is normal), but the likeliest explanation.
            reasons.append(f"last retry {last[0]:.0f}s ago: {last[1]}")
        return not reasons, reasons


def _bind_problem(exc: OSError, host: str, port: int) -> str | None:
    """One line saying why the metrics server could not bind, for the errors a setting causes."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (f"metrics port {where} is already in use (another esindexer on this host?): choose another "
                "with ESINDEXER_METRICS_PORT, or 0 to turn the metrics server off")
    if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES):
        return f"cannot listen on {where} ({exc.strerror}): check ESINDEXER_METRICS_HOST and ESINDEXER_METRICS_PORT"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve ESINDEXER_METRICS_HOST {host!r} ({exc.strerror})"
    return None


def _handler_for(health: HealthServer) -> type[MetricsHandler]:
    """A request handler class bound to ``health`` and its registry."""

    class Handler(MetricsHandler):
        registry = health.metrics.registry

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                super().do_GET()
            elif path == "/healthz":
                self._text(200, "ok\n")
            elif path == "/readyz":
                ready, reasons = health.readiness()
                self._text(200 if ready else 503, "ready\n" if ready else "\n".join(reasons) + "\n")
            else:
                self._text(404, "not found: try /metrics, /healthz or /readyz\n")

        def _text(self, status: int, body: str) -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http %s", format % args)

    return Handler
