"""The Elasticsearch client: how it is built from the settings, and what its errors mean.

Transient trouble (unreachable, timeouts, 429, 5xx) is retried for ever with the
progress frozen; that is right for outages and wrong for a wrong password, a missing
privilege or a certificate nobody vouches for: retrying those only hides them behind a
growing lag. :func:`as_setup_error` tells the two apart, :func:`retry_reason` labels
the transient kinds (metrics, logs), and :func:`describe_error` gives the one line an
operator reads.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

import orjson
from elastic_transport import TlsError
from elasticsearch import ApiError, ConnectionTimeout, TransportError
from elasticsearch import ConnectionError as ESConnectionError
from elasticsearch.serializer import JsonSerializer, NdjsonSerializer

from esindexer.errors import RetryableItems, SetupError
from esindexer.redact import redact

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

    from esindexer.config import Settings


def make_es_client(settings: Settings) -> Elasticsearch:
    """The search engine's client as configured; its own retries are off (the sink retries).

    The one place the engine is chosen (``ESINDEXER_SEARCH_ENGINE``): for OpenSearch it is
    :class:`esindexer.opensearch.client.OpenSearchClient`, which presents this client's
    interface (and raises its exceptions), so everything downstream is engine-neutral.
    ``auto`` asks the server once, here (``GET /``).
    """
    from elasticsearch import Elasticsearch

    engine = settings.search_engine
    if engine == "auto":
        from esindexer.opensearch.client import detect_engine

        engine = detect_engine(settings)
    if engine == "opensearch":
        from esindexer.opensearch.client import OpenSearchClient

        return cast("Elasticsearch", OpenSearchClient.from_settings(settings))

    kwargs: dict[str, Any] = dict(
        hosts=list(settings.es_url),
        request_timeout=settings.es_request_timeout,
        max_retries=0,
        retry_on_timeout=False,
        verify_certs=settings.es_verify_certs,
    )
    if settings.es_ca_file:
        kwargs["ca_certs"] = settings.es_ca_file
    if settings.es_api_key:
        kwargs["api_key"] = settings.es_api_key
    elif settings.es_username:
        kwargs["basic_auth"] = (settings.es_username, settings.es_password)
    return Elasticsearch(**kwargs, serializers=_serializers())


def _serializers() -> dict[str, Any]:
    """The client's serializers, minus two per-request costs of a backfill (docs/performance.md)."""
    return {_Responses.mimetype: _Responses(), _Ndjson.mimetype: _Ndjson()}


#: Every byte a space but the digits, which become "0": a run of 20 digits is then found by
#: one substring search (40 µs in a 28 KB answer; a regular expression takes 500).
_ZEROS = bytes(0x30 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))
_TWENTY_DIGITS = b"0" * 20


def _loads(data: Any) -> Any:
    """A response parsed by orjson (0.2 ms for a 1,000-item bulk answer, 0.56 with the
    standard library); by the standard library where orjson would not give the same
    values: a number of 20 digits or more (orjson reads an integer beyond 64 bits as a
    float, and a document's ``_source`` may hold one), and whatever orjson refuses (a lone
    surrogate, NaN)."""
    if type(data) is bytes and _TWENTY_DIGITS not in data.translate(_ZEROS):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


class _Responses(JsonSerializer):
    """JSON as the client's, answers parsed by :func:`_loads`. Request bodies stay the
    client's own (the standard library's, with its ``default`` for dates and the like)."""

    def json_loads(self, data: bytes) -> Any:
        return _loads(data)


class _Ndjson(NdjsonSerializer):
    """A bulk body is already NDJSON bytes (:func:`esindexer.es.bulk.bulk_body`): sent as
    it is, where the client's serializer copies it twice (1.3 ms a 1,000-document request)."""

    def dumps(self, data: Any) -> bytes:
        if type(data) is bytes and data.endswith(b"\n"):
            return data
        return super().dumps(data)

    def json_loads(self, data: bytes) -> Any:
        return _loads(data)



#: Answers that say nothing about what serves the URL: a proxy's while Elasticsearch
#: behind it is away (transient), and authentication failures, which Elasticsearch's
#: security layer sends without the product header (handled as credentials problems).
_NOT_PRODUCT_EVIDENCE = {401, 403, 429, 502, 503, 504}


def engine_of(es: Any) -> str:
    """``opensearch`` for the OpenSearch client, else ``elasticsearch``: what the few
    engine-specific steps (the mapping dialect, the server check) go by."""
    return str(getattr(es, "engine", "elasticsearch"))


def check_elasticsearch(es: Elasticsearch) -> None:
    """Raise :class:`SetupError` when the URL answers, but not as the configured engine does.

    OpenSearch is checked by its client (``GET /`` must say ``distribution: opensearch``).

    Elasticsearch marks every answer, errors included, with ``X-Elastic-Product``; the
    client checks it on successes. An error without it (a web server's 404 or 501 at a
    mistyped port or path) would otherwise be retried for ever as a server error.
    """
    from elasticsearch import ApiError, UnsupportedProductError

    if engine_of(es) == "opensearch":
        es.check_server()  # type: ignore[attr-defined]  # the OpenSearch client's own check
        return
    try:
        es.cluster.health(timeout="1s")
    except UnsupportedProductError as exc:
        raise SetupError(f"ESINDEXER_ES_URL does not lead to Elasticsearch: {exc}") from None
    except ApiError as exc:
        headers = {k.lower() for k in (exc.meta.headers or {})}
        if "x-elastic-product" not in headers and exc.meta.status not in _NOT_PRODUCT_EVIDENCE:
            raise SetupError(f"ESINDEXER_ES_URL does not lead to Elasticsearch: the server answered "
                             f"HTTP {exc.meta.status} without Elasticsearch's X-Elastic-Product header "
                             "(wrong host, port or path?)") from None
        raise



def as_setup_error(exc: BaseException) -> SetupError | None:
    """The :class:`SetupError` ``exc`` amounts to, or None when it is something else."""
    if isinstance(exc, SetupError):
        return exc
    if isinstance(exc, TlsError) and "wrong_version_number" in describe_error(exc).lower():
        return SetupError(
            f"TLS with Elasticsearch failed ({describe_error(exc)}): ESINDEXER_ES_URL says https:// but the "
            "server at that port answers in plain HTTP; use http:// or the port where the node serves HTTPS")
    if isinstance(exc, TlsError) and "certificate" in describe_error(exc).lower():
        # (other TLS trouble, such as a handshake cut short by a restarting node, is transient)
        return SetupError(
            f"TLS with Elasticsearch failed ({describe_error(exc)}): give the CA that signed its certificate "
            "with ESINDEXER_ES_CA_FILE (ESINDEXER_ES_VERIFY_CERTS=false only for a throw-away test server)")
    if isinstance(exc, ApiError) and exc.meta.status == 401:
        return SetupError(
            f"Elasticsearch refused the credentials (HTTP 401: {_reason(exc)}): check ESINDEXER_ES_API_KEY, "
            "or ESINDEXER_ES_USERNAME and ESINDEXER_ES_PASSWORD")
    if isinstance(exc, ApiError) and exc.meta.status == 403:
        return SetupError(
            f"the Elasticsearch user lacks a privilege (HTTP 403: {_reason(exc)}); esindexer needs the cluster "
            "privileges manage_index_templates and monitor (and read_pipeline with ESINDEXER_INGEST_PIPELINE) "
            "and, on <prefix>*, create_index, write, read, view_index_metadata and manage "
            "(docs/configuration.md)")
    return None


def _reason(exc: ApiError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    if isinstance(error, dict) and error.get("reason"):
        return str(error["reason"])
    return describe_error(exc)


def describe_error(exc: BaseException) -> str:
    """The first line of what went wrong, for logs and /readyz.

    elastic_transport's errors keep the underlying reason in ``.message``; their str()
    can be as bare as "Connection error" or "TLS error".
    """
    if isinstance(exc, ApiError):  # its str() has the status and the server's reason
        text = str(exc).strip()
    else:
        text = str(getattr(exc, "message", "") or exc).strip()
    return redact(text.splitlines()[0][:300]) if text else type(exc).__name__



def connection_hint(exc: BaseException) -> str:
    """What a connection failure suggests checking, or ''; appended to retry lines and errors."""
    text = describe_error(exc).lower()
    if "closed connection without response" in text or "connection reset" in text:
        return ("the server closed the connection without an HTTP answer: an HTTPS-only node reached with "
                "http://, or a port that is not Elasticsearch's HTTP port (9200)?")
    if "connection refused" in text:
        return "nothing listens at that address: is Elasticsearch running, and are the host and port right?"
    if isinstance(exc, ConnectionTimeout) or "timed out" in text:
        return "no answer in time: a firewall, a wrong host, or an overloaded node?"
    return ""


def retry_reason(exc: BaseException) -> str | None:
    """A short label when ``exc`` is worth retrying, else None."""
    if isinstance(exc, RetryableItems):
        return "item_" + exc.reason
    if as_setup_error(exc) is not None:  # an unverifiable certificate: retrying cannot help
        return None
    if isinstance(exc, ConnectionTimeout):
        return "es_timeout"
    if isinstance(exc, ESConnectionError):
        return "es_unreachable"
    if isinstance(exc, ApiError):
        if exc.meta.status == 429:
            return "es_429"
        if exc.meta.status >= 500:
            return f"es_{exc.meta.status}"
        return None
    if isinstance(exc, TransportError):
        return "es_transport"
    return None

