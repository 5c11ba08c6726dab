"""``scripts/demo`` honours its settings, and the commands it prints use them.

Issue 26.5: with ``ESINDEXER_INDEX_PREFIX=ncdemo scripts/demo`` the ``status`` command the
demo printed reported the ``zodb`` prefix (missing indices, 0 documents), and the demo
database's name was fixed, so two demos could not share a server. This runs the demo as
an operator would, with its own database, prefix and port, runs the ``status`` command it
printed, and stops it with Ctrl-C.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import psycopg2

from tests.pipeline.processes import free_port, http_status
from tests.support import wait_for

REPO = Path(__file__).resolve().parent.parent


def test_the_demo_uses_its_database_prefix_and_port_and_says_so(pg_dsn, es, es_prefix, tmp_path):
    database = f"esit_demo_{uuid.uuid4().hex[:8]}"
    prefix = es_prefix.rstrip("-")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESINDEXER_")}
    env.update(DEMO_DATABASE=database, ESINDEXER_INDEX_PREFIX=prefix, ESINDEXER_METRICS_PORT=str(port),
               DEMO_INTERVAL="0.5")
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        demo = subprocess.Popen([str(REPO / "scripts" / "demo"), "--fresh"], env=env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (r := http_status(port, "/readyz")) is not None and r[0] == 200, timeout=180,
                 message="the demo's esindexer ready")
        printed = re.search(r"^\[demo\]\s+(ESINDEXER_PG_DSN=.* status)$", log_path.read_text(), re.M)
        assert printed, log_path.read_text()
        command = printed.group(1)
        assert f"/{database}'" in command and f"ESINDEXER_INDEX_PREFIX='{prefix}'" in command

        def indexed() -> str | None:
            done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                                  env={k: v for k, v in os.environ.items() if not k.startswith("ESINDEXER_")})
            return done.stdout if done.returncode == 0 and re.search(r"\(\d*[1-9]\d* docs\)", done.stdout) else None

        status = wait_for(indexed, timeout=60, message="status of the demo's indices")
        assert f"{prefix}-objects (" in status and "missing" not in status, status
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        if demo.poll() is None:  # SIGTERM: the demo stops its writer and esindexer (SIGKILL would orphan them)
            demo.terminate()
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
        admin = psycopg2.connect(pg_dsn)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
