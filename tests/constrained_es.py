"""A second, deliberately small Elasticsearch node, to meet HTTP 413 and 429 for real.

The shared test node accepts everything we send it, so the paths that handle a
request-too-large answer (split the bulk, dead-letter the one document that is too big
on its own) and back-pressure (per-item and whole-request ``429
es_rejected_execution_exception``) would otherwise only ever run against fakes. This
node runs the same integ-test-zip with:

* ``http.max_content_length`` small (64 KiB), so an ordinary bulk gets 413;
* a write thread pool of one thread with a queue of one, so concurrent bulks into a
  many-shard index are rejected per item with 429.

It is started once per test session, only when a test asks for it, from the install
``scripts/services up`` made (``ESINDEXER_TEST_ES_HOME``, ``ESINDEXER_TEST_ES_JAVA_HOME``,
``ESINDEXER_TEST_ES_USER``); with a Docker engine, testcontainers runs the image with
the same settings instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

#: The node settings that make it small; tests read MAX_CONTENT_BYTES to size documents.
MAX_CONTENT_BYTES = 64 * 1024
CONSTRAINED_SETTINGS = {
    "http.max_content_length": "64kb",
    "thread_pool.write.size": "1",
    "thread_pool.write.queue_size": "1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_cluster/health?wait_for_status=yellow&timeout=1s",
                                    timeout=3) as answer:
            return answer.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def local_node(es_home: str, java_home: str, user: str | None) -> Iterator[str]:
    """Run a constrained node from an unpacked integ-test-zip; yields its URL."""
    base = Path(tempfile.mkdtemp(prefix="esindexer-constrained-"))
    conf = base / "config"
    shutil.copytree(Path(es_home) / "config", conf)
    http_port, transport_port = _free_port(), _free_port()
    lines = {
        "cluster.name": "esindexer-constrained",
        "node.name": "constrained-1",
        "discovery.type": "single-node",
        "network.host": "127.0.0.1",
        "http.port": str(http_port),
        "transport.port": str(transport_port),
        "path.data": str(base / "data"),
        "path.logs": str(base / "logs"),
        "xpack.security.enabled": "false",
        "cluster.routing.allocation.disk.threshold_enabled": "false",
        "node.store.allow_mmap": "false",
        "indices.breaker.total.use_real_memory": "false",
        "action.destructive_requires_name": "false",
        **CONSTRAINED_SETTINGS,
    }
    (conf / "elasticsearch.yml").write_text("".join(f"{k}: {v}\n" for k, v in lines.items()))
    pidfile = base / "es.pid"
    env = {**os.environ, "ES_PATH_CONF": str(conf), "ES_JAVA_HOME": java_home,
           "ES_JAVA_OPTS": "-Xms512m -Xmx512m"}
    command = [str(Path(es_home) / "bin" / "elasticsearch"), "-d", "-p", str(pidfile)]
    if user and os.geteuid() == 0:
        shutil.chown(base, user, user)
        for path in base.rglob("*"):
            shutil.chown(path, user, user)
        command = ["runuser", "-u", user, "--", "env", *(f"{k}={env[k]}" for k in
                   ("ES_PATH_CONF", "ES_JAVA_HOME", "ES_JAVA_OPTS")), *command]
    url = f"http://127.0.0.1:{http_port}"
    try:
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not _healthy(url):
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-3000:] for p in (base / "logs").glob("*.log"))
                raise RuntimeError(f"constrained Elasticsearch did not start:\n{logs}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def docker_node(image: str) -> Iterator[str]:
    """The same constrained node as a container (when a Docker engine answers)."""
    from testcontainers.elasticsearch import ElasticSearchContainer

    container = ElasticSearchContainer(image, mem_limit="1G")
    for key, value in CONSTRAINED_SETTINGS.items():
        container.with_env(key, value)
    with container as es:
        yield f"http://{es.get_container_host_ip()}:{es.get_exposed_port(es.port)}"
