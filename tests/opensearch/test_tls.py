"""TLS and basic auth of the OpenSearch client, through a real TLS stack.

OpenSearch's TLS and users are its security plugin's, which the integ-test zip lacks; so
here a loopback reverse proxy terminates HTTPS with a certificate signed by a test CA
(made with openssl, as for the secured Elasticsearch node) and asks for one basic-auth
user, in front of the real OpenSearch node, as the security plugin's HTTP layer would.
What is proved is esindexer's side: the CA file, certificate verification, the
credentials sent, and what a wrong CA or a wrong password becomes (exit 2, one line).
"""

from __future__ import annotations

import base64
import http.client
import http.server
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from esindexer.errors import SetupError
from esindexer.es.admin import ensure_indices
from esindexer.es.client import as_setup_error, make_es_client
from tests.es_nodes import _make_certificates
from tests.indexing import make_settings
from tests.support import search_engine

pytestmark = pytest.mark.skipif(search_engine() != "opensearch",
                                reason="the OpenSearch run of scripts/test (ESIT_SEARCH_ENGINE=opensearch)")

USER, PASSWORD = "esindexer", "s3cret-for-tests"


class _Proxy(http.server.BaseHTTPRequestHandler):
    upstream: tuple[str, int] = ("127.0.0.1", 9200)

    def _forward(self) -> None:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            body = b'{"error":{"type":"security_exception","reason":"Unauthorized"},"status":401}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(*self.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")}
        upstream.request(self.command, self.path, body=payload, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def tls_proxy(es_url: str) -> Iterator[tuple[str, str]]:
    """``(https URL, CA file)`` of the proxy in front of the OpenSearch node."""
    conf = Path(tempfile.mkdtemp(prefix="esindexer-tls-"))
    _make_certificates(conf)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(conf / "certs" / "node.crt", conf / "certs" / "node.key")
    target = urlsplit(es_url)
    handler = type("Proxy", (_Proxy,), {"upstream": (target.hostname, target.port)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}", str(conf / "certs" / "ca.crt")
    finally:
        server.shutdown()


def test_https_with_the_ca_and_basic_auth_indexes(tls_proxy, es_prefix):
    url, ca_file = tls_proxy
    settings = make_settings("postgresql://x/y", url, es_prefix, es_ca_file=ca_file, es_username=USER,
                             es_password=PASSWORD)
    client = make_es_client(settings)
    assert ensure_indices(client, settings) == settings.routed_indices
    assert client.indices.exists(index=settings.routed_indices[0])
    client.close()


def test_a_wrong_password_or_an_unknown_ca_is_a_setup_error(tls_proxy, es_prefix):
    url, ca_file = tls_proxy
    wrong_password = make_settings("postgresql://x/y", url, es_prefix, es_ca_file=ca_file, es_username=USER,
                                   es_password="wrong")
    with pytest.raises(Exception) as refused:
        ensure_indices(make_es_client(wrong_password), wrong_password)
    problem = as_setup_error(refused.value)
    assert isinstance(problem, SetupError) and "refused the credentials (HTTP 401" in str(problem)

    no_ca = make_settings("postgresql://x/y", url, es_prefix, es_username=USER, es_password=PASSWORD)
    with pytest.raises(Exception) as untrusted:
        ensure_indices(make_es_client(no_ca), no_ca)
    problem = as_setup_error(untrusted.value)
    assert isinstance(problem, SetupError) and "ESINDEXER_ES_CA_FILE" in str(problem), untrusted.value
