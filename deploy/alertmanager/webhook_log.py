"""A webhook receiver for Alertmanager that prints one line per alert to stdout.

Why it exists: the demo stack (docker-compose.yml, service ``alert-log``) has no pager,
mail server or chat to deliver to, yet paging should be visible end to end:
``docker compose logs -f alert-log`` shows what would have paged whom. The tests use the
same script as the receiver of a real Alertmanager (tests/observe/test_paging.py).
It is not a production receiver: it keeps nothing and forwards nothing.

Each line is ``<path> <status> <alertname> key=value...``: the path names the receiver
(``/page``, ``/ticket``, ``/default`` in deploy/alertmanager/alertmanager.yml), the
status is ``firing`` or ``resolved``, followed by the alert's labels and its summary.
Standard library only, so it runs in a plain ``python:3.11-slim`` image.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Alertmanager posts at most a few alerts per group; refuse bodies beyond this.
MAX_BODY = 4 * 1024 * 1024


def format_alerts(path: str, payload: dict[str, Any]) -> list[str]:
    """One line per alert of an Alertmanager webhook payload (version 4)."""
    lines = []
    for alert in payload.get("alerts", []):
        labels = dict(alert.get("labels", {}))
        name = labels.pop("alertname", "?")
        pairs = [f"{key}={json.dumps(value)}" for key, value in sorted(labels.items())]
        summary = alert.get("annotations", {}).get("summary", "")
        lines.append(" ".join([path, alert.get("status", "?"), name, *pairs, f"summary={json.dumps(summary)}"]))
    return lines


class Handler(BaseHTTPRequestHandler):
    """Accepts POSTs on any path, prints their alerts, answers 200 (400 for bad JSON)."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._answer(413, "body too large\n")
            return
        try:
            payload = json.loads(self.rfile.read(length))
        except ValueError as exc:
            print(f"{self.path} invalid JSON: {exc}", file=sys.stderr, flush=True)
            self._answer(400, "invalid JSON\n")
            return
        for line in format_alerts(self.path, payload):
            print(line, flush=True)
        self._answer(200, "ok\n")

    def do_GET(self) -> None:
        self._answer(200, "alert-log: POST Alertmanager webhooks here\n")

    def _answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the alert lines are the log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=5001, help="port to listen on (default 5001)")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    # As PID 1 in a container, SIGTERM is ignored unless handled: stop at once instead.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"alert-log listening on {args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
