"""Extra Elasticsearch nodes for the failure paths the shared test node cannot show.

The shared node (``scripts/services``) accepts everything, without security. Two more
single-node servers run from the same integ-test-zip install, each started once per
test session and only when a test asks for it:

* the **constrained** node: ``http.max_content_length`` 64 KiB, so an ordinary bulk
  gets HTTP 413, and a write thread pool of one thread with a queue of one, so
  concurrent bulks into a many-shard index are rejected per item with 429;
* the **secured** node: security on, HTTPS with a certificate from a test CA (made
  here with openssl), file-realm users (a superuser, one with the least-privilege role
  the docs recommend, one lacking a privilege), so authentication, authorisation,
  certificate verification and their failures are exercised for real.

Both come from the install ``scripts/services up`` made (``ESIT_ES_HOME``,
``ESIT_ES_JAVA_HOME``, ``ESIT_ES_USER``); with a Docker engine,
testcontainers runs the image with the constrained settings instead.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: The node settings that make it small; tests read MAX_CONTENT_BYTES to size documents.
MAX_CONTENT_BYTES = 64 * 1024
CONSTRAINED_SETTINGS = {
    "http.max_content_length": "64kb",
    "thread_pool.write.size": "1",
    "thread_pool.write.queue_size": "1",
}

#: The secured node's superuser (file realm).
SECURED_USER, SECURED_PASSWORD = "esindexer-admin", "s3cret-for-tests"
#: A user with exactly the role docs/configuration.md recommends, for indices named t-*
#: (every test prefix), and one whose role lacks the cluster privilege for templates.
WRITER_USER, NO_TEMPLATES_USER = "esindexer-writer", "esindexer-no-templates"
#: A writer whose password a test changes while the service runs, and one whose role a
#: test narrows (DEMOTED_ROLE's index pattern) while the service runs.
ROTATED_USER, DEMOTED_USER = "esindexer-rotated", "esindexer-demoted"
DEMOTED_ROLE = """\
esindexer_demoted:
  cluster: [manage_index_templates, monitor]
  indices:
    - names: ["{names}"]
      privileges: [create_index, write, read, view_index_metadata, manage]
"""
_ROLES = """\
esindexer_writer:
  cluster: [manage_index_templates, monitor, read_pipeline]
  indices:
    - names: ["t-*"]
      privileges: [create_index, write, read, view_index_metadata, manage]
esindexer_no_templates:
  cluster: [monitor]
  indices:
    - names: ["t-*"]
      privileges: [create_index, write, read, view_index_metadata, manage]
"""


@dataclass(frozen=True)
class SecuredNode:
    url: str  # https://127.0.0.1:<port>
    ca_file: str  # the test CA that signed the node's certificate
    username: str = SECURED_USER  # a superuser
    password: str = SECURED_PASSWORD  # (every user of the node has this password)
    writer: str = WRITER_USER  # the documented least-privilege role
    no_templates: str = NO_TEMPLATES_USER  # that role without manage_index_templates
    rotated: str = ROTATED_USER  # the writer role, for a test that changes its password
    demoted: str = DEMOTED_USER  # a writer on t-*, for a test that narrows its role
    set_password: Callable[[str, str], None] = lambda user, password: None
    roles_file: str = ""

    def set_demoted_indices(self, pattern: str) -> None:
        """Give the demoted user's role privileges on ``pattern`` only (reloaded within ~5 s)."""
        path = Path(self.roles_file)
        text = path.read_text()
        path.write_text(text[: text.index("esindexer_demoted:")] + DEMOTED_ROLE.format(names=pattern))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str, ca_file: str | None = None, auth: tuple[str, str] | None = None) -> bool:
    request = urllib.request.Request(f"{url}/_cluster/health?wait_for_status=yellow&timeout=1s")
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    try:
        with urllib.request.urlopen(request, timeout=3, context=context) as answer:
            return answer.status == 200
    except OSError:
        return False


class LocalNode:
    """One single-node server with its own settings, run from an unpacked integ-test-zip.

    Its ports, configuration and data directory are fixed when it is made, so it can be
    killed and started again on the same data (a real crash, not a network cut).
    ``prepare_files(config_dir)`` runs first (as this process's user);
    ``prepare_with_tools(tool)`` then runs the node's ``bin/`` tools as the node's user.
    """

    def __init__(self, es_home: str, java_home: str, user: str | None, settings: dict[str, str | None], *,
                 prepare_files: Callable[[Path], None] | None = None,
                 prepare_with_tools: Callable[[Callable[..., None]], None] | None = None,
                 healthy: Callable[[str], bool] = _healthy, scheme: str = "http",
                 ports: tuple[int, int] | None = None, engine: str = "elasticsearch"):
        self.base = Path(tempfile.mkdtemp(prefix="esindexer-node-"))
        conf = self.base / "config"
        shutil.copytree(Path(es_home) / "config", conf)
        http_port, transport_port = ports or (_free_port(), _free_port())
        lines = {
            "cluster.name": "esindexer-extra",
            "node.name": "extra-1",
            "discovery.type": "single-node",
            "network.host": "127.0.0.1",
            "http.port": str(http_port),
            "transport.port": str(transport_port),
            "path.data": str(self.base / "data"),
            "path.logs": str(self.base / "logs"),
            **({"xpack.security.enabled": "false"} if engine == "elasticsearch" else {}),
            "cluster.routing.allocation.disk.threshold_enabled": "false",
            "node.store.allow_mmap": "false",
            "indices.breaker.total.use_real_memory": "false",
            "action.destructive_requires_name": "false",
            **settings,
        }
        # A value of None removes a default (a cluster node is not "single-node").
        # OpenSearch's launcher has the same options under its own names (and no security
        # plugin in the integ-test-zip).
        name, var = ("opensearch", "OPENSEARCH") if engine == "opensearch" else ("elasticsearch", "ES")
        self._command = name
        (conf / f"{name}.yml").write_text("".join(f"{k}: {v}\n" for k, v in lines.items() if v is not None))
        self._settings = settings
        self._es_home = es_home
        own = {f"{var}_PATH_CONF": str(conf), f"{var}_JAVA_HOME": java_home, f"{var}_JAVA_OPTS": "-Xms512m -Xmx512m"}
        self._env = {**os.environ, **own}
        self._as_user: list[str] = []
        if user and os.geteuid() == 0:
            self._as_user = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in own.items())]
        if prepare_files:
            prepare_files(conf)
        if self._as_user:
            for path in [self.base, *self.base.rglob("*")]:
                shutil.chown(path, user, user)
        if prepare_with_tools:
            prepare_with_tools(self.tool)
        self._pidfile = self.base / "es.pid"
        self._healthy = healthy
        self.url = f"{scheme}://127.0.0.1:{http_port}"

    def tool(self, name: str, *args: str) -> None:
        """Run ``bin/<name> args`` as the node's user, with its configuration."""
        subprocess.run([*self._as_user, str(Path(self._es_home) / "bin" / name), *args], env=self._env,
                       check=True, stdout=subprocess.DEVNULL)

    def start(self, wait: bool = True) -> None:
        """Start the server and wait until it answers healthy (3 minutes at most)."""
        self.tool(self._command, "-d", "-p", str(self._pidfile))
        if wait:
            self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + 180
        while not self._healthy(self.url):
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-3000:] for p in (self.base / "logs").glob("*.log"))
                raise RuntimeError(f"Elasticsearch ({self._settings}) did not start:\n{logs}")
            time.sleep(0.5)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` (SIGKILL: a crash) and wait for the process to be gone."""
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            pid = int(self._pidfile.read_text())
            os.kill(pid, sig)
            for _ in range(200):
                os.kill(pid, 0)
                time.sleep(0.1)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def node_of_the_test_engine(settings: dict[str, str | None]) -> LocalNode:
    """A :class:`LocalNode` of the engine the run tests (``ESIT_SEARCH_ENGINE``), from the
    install ``scripts/services`` made (``ESIT_ES_HOME`` or ``ESIT_OPENSEARCH_HOME``)."""
    if os.environ.get("ESIT_SEARCH_ENGINE") == "opensearch":
        return LocalNode(os.environ["ESIT_OPENSEARCH_HOME"], os.environ["ESIT_OPENSEARCH_JAVA_HOME"],
                         os.environ.get("ESIT_OPENSEARCH_USER"), settings, engine="opensearch")
    return LocalNode(os.environ["ESIT_ES_HOME"], os.environ["ESIT_ES_JAVA_HOME"],
                     os.environ.get("ESIT_ES_USER"), settings)


@contextlib.contextmanager
def _node(es_home: str, java_home: str, user: str | None, settings: dict[str, str],
          **kwargs) -> Iterator[str]:
    """A started :class:`LocalNode`, removed afterwards; yields its URL."""
    node = LocalNode(es_home, java_home, user, settings, **kwargs)
    try:
        node.start()
        yield node.url
    finally:
        node.close()


@contextlib.contextmanager
def local_node(es_home: str, java_home: str, user: str | None, engine: str = "elasticsearch") -> Iterator[str]:
    """The constrained node (413 and 429); yields its URL."""
    with _node(es_home, java_home, user, CONSTRAINED_SETTINGS, engine=engine) as url:
        yield url


def _make_certificates(conf: Path) -> None:
    """A test CA and a certificate for 127.0.0.1/localhost signed by it, in config/certs."""
    certs = conf / "certs"
    certs.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=certs, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=esindexer test CA",
            "-keyout", "ca.key", "-out", "ca.crt")
    (certs / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "node.key",
            "-out", "node.csr")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "node.crt")


SECURED_SETTINGS = {
    "xpack.security.enabled": "true",
    "xpack.security.http.ssl.enabled": "true",
    "xpack.security.http.ssl.key": "certs/node.key",
    "xpack.security.http.ssl.certificate": "certs/node.crt",
    "xpack.security.authc.api_key.enabled": "true",
}


@contextlib.contextmanager
def secured_node(es_home: str, java_home: str, user: str | None) -> Iterator[SecuredNode]:
    """The secured node (HTTPS with a test CA, a superuser, API keys); yields how to reach it."""
    ca_file: list[str] = []
    tools: list[Callable[..., None]] = []

    def prepare_files(conf: Path) -> None:
        _make_certificates(conf)
        ca_file.append(str(conf / "certs" / "ca.crt"))
        (conf / "roles.yml").write_text(_ROLES + DEMOTED_ROLE.format(names="t-*"))

    def add_user(tool: Callable[..., None]) -> None:
        tools.append(tool)
        for name, role in ((SECURED_USER, "superuser"), (WRITER_USER, "esindexer_writer"),
                           (NO_TEMPLATES_USER, "esindexer_no_templates"), (ROTATED_USER, "esindexer_writer"),
                           (DEMOTED_USER, "esindexer_demoted")):
            tool("elasticsearch-users", "useradd", name, "-p", SECURED_PASSWORD, "-r", role)

    def set_password(name: str, password: str) -> None:
        """Change a user's password; the node reloads its users file within ~5 s."""
        tools[0]("elasticsearch-users", "passwd", name, "-p", password)

    def healthy(url: str) -> bool:
        return _healthy(url, ca_file[0], (SECURED_USER, SECURED_PASSWORD))

    with _node(es_home, java_home, user, SECURED_SETTINGS, prepare_files=prepare_files,
               prepare_with_tools=add_user, healthy=healthy, scheme="https") as url:
        yield SecuredNode(url, ca_file[0], set_password=set_password,
                          roles_file=str(Path(ca_file[0]).parent.parent / "roles.yml"))


@contextlib.contextmanager
def docker_node(image: str) -> Iterator[str]:
    """The constrained node as a container (when a Docker engine answers)."""
    from testcontainers.elasticsearch import ElasticSearchContainer

    container = ElasticSearchContainer(image, mem_limit="1G")
    for key, value in CONSTRAINED_SETTINGS.items():
        container.with_env(key, value)
    with container as es:
        yield f"http://{es.get_container_host_ip()}:{es.get_exposed_port(es.port)}"


class LocalCluster:
    """Three (``size``) nodes of one cluster on loopback, each with its own ports and data
    path, all master-eligible data nodes, from the same install: the production shape
    for the failure tests (a data node killed, the elected master killed).

    Nodes are started together (the first election needs a majority of
    ``cluster.initial_master_nodes``); :meth:`kill` and :meth:`restart` act on one
    node by name, on the same data directory, as a crash and a reboot would.
    """

    def __init__(self, es_home: str, java_home: str, user: str | None, size: int = 3) -> None:
        ports = [(_free_port(), _free_port()) for _ in range(size)]
        names = [f"node-{i}" for i in range(size)]
        common: dict[str, str | None] = {
            "cluster.name": f"esindexer-cluster-{os.getpid()}",
            "discovery.type": None,
            "discovery.seed_hosts": "[" + ", ".join(f'"127.0.0.1:{t}"' for _, t in ports) + "]",
            "cluster.initial_master_nodes": "[" + ", ".join(f'"{n}"' for n in names) + "]",
        }
        self.nodes = {name: LocalNode(es_home, java_home, user, {**common, "node.name": name}, ports=port,
                                      healthy=lambda url: _healthy(url))
                      for name, port in zip(names, ports)}

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes.values()]

    def start(self) -> None:
        for node in self.nodes.values():
            node.start(wait=False)
        for node in self.nodes.values():
            node.wait_healthy()

    def kill(self, name: str) -> None:
        """SIGKILL one node: a crash, not a clean leave."""
        self.nodes[name].stop(signal.SIGKILL)

    def restart(self, name: str) -> None:
        self.nodes[name].start()

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()


@contextlib.contextmanager
def local_cluster(es_home: str, java_home: str, user: str | None, size: int = 3) -> Iterator[LocalCluster]:
    """A started :class:`LocalCluster`, removed afterwards."""
    cluster = LocalCluster(es_home, java_home, user, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
