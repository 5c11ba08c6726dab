"""An OpenSearch client that the Elasticsearch sink can drive unchanged.

OpenSearch speaks the Elasticsearch REST API of 7.10 for everything esindexer does
(``_bulk`` with external versions, composable index templates, aliases,
``search_after``, realtime ``_mget``, ``if_seq_no``), but the Elasticsearch 9 client
refuses it (it checks the ``X-Elastic-Product`` header of every answer and sends
``compatible-with=9`` media types). So this class sends the same requests through
``opensearch-py``'s transport (its connection pool, TLS and basic auth) and presents the
subset of the Elasticsearch client's interface that :mod:`esindexer.es` and the
operator commands call, with the same answers: responses with ``.body`` and
``.meta.status``, and the *Elasticsearch client's* exception classes (an ``ApiError``
with the status and the server's error body, ``ConnectionError``, ``ConnectionTimeout``,
``TlsError``). Everything that classifies answers (per-item outcomes, retry reasons,
credentials problems, 413 learning) is therefore written once, in :mod:`esindexer.es`,
and holds for both engines.

Only what esindexer and its tests call is here: a method missing is an
``AttributeError`` at the first call, never a silent difference.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig, ObjectApiResponse
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout as TransportTimeout
from elastic_transport import TlsError as TransportTlsError
from elasticsearch.exceptions import HTTP_EXCEPTIONS, ApiError

from esindexer.errors import SetupError

if TYPE_CHECKING:
    from opensearchpy import OpenSearch

    from esindexer.config import Settings

#: Keyword arguments of the Elasticsearch client that go into the request body, per API.
_SEARCH_BODY = {"query", "sort", "size", "from_", "source", "docvalue_fields", "version", "seq_no_primary_term",
                "search_after", "track_total_hits", "aggs", "aggregations", "fields", "stored_fields",
                "collapse", "highlight", "post_filter", "runtime_mappings"}
#: Query parameters the Elasticsearch client names without their leading underscore.
_UNDERSCORED = {"source": "_source", "source_includes": "_source_includes", "source_excludes": "_source_excludes"}


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_param(v) for v in value)
    return str(value)


def _path(*parts: str | None) -> str:
    return "/" + "/".join(quote(part, safe=",*") for part in parts if part)


class OpenSearchClient:
    """The Elasticsearch client's interface, as esindexer uses it, over OpenSearch.

    ``engine`` names the server kind for the code that must differ (the mapping dialect,
    :mod:`esindexer.opensearch.mapping`); ``distribution`` and ``version`` are read from
    ``GET /`` by :meth:`check_server`.
    """

    engine = "opensearch"

    def __init__(self, client: OpenSearch, *, request_timeout: float = 60.0,
                 ignore_status: Collection[int] = ()):
        self._client = client
        self._timeout = request_timeout
        self._ignore = tuple(ignore_status)
        self.indices = _Indices(self)
        self.cluster = _Cluster(self)
        self.ingest = _Ingest(self)
        self.nodes = _Nodes(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenSearchClient:
        """A client as configured: TLS (``https://`` URLs, CA file, verification) and basic
        auth; its own retries are off (the sink retries)."""
        return cls(_opensearch(settings, settings.es_request_timeout), request_timeout=settings.es_request_timeout)

    def options(self, *, ignore_status: int | Collection[int] = (), request_timeout: float | None = None,
                **_: Any) -> OpenSearchClient:
        """A view with other per-request options, as ``Elasticsearch.options``."""
        ignored = (ignore_status,) if isinstance(ignore_status, int) else tuple(ignore_status)
        return OpenSearchClient(self._client, request_timeout=request_timeout or self._timeout,
                                ignore_status=ignored)

    def close(self) -> None:
        self._client.close()

    # -- the one request path --------------------------------------------------------

    def request(self, method: str, path: str, params: Mapping[str, Any] | None = None, body: Any = None,
                headers: Mapping[str, str] | None = None) -> ObjectApiResponse[Any]:
        """Send one request; answer as the Elasticsearch client does (or raise its errors)."""
        from opensearchpy import exceptions as ose

        query = {_UNDERSCORED.get(k, k): _param(v) for k, v in (params or {}).items() if v is not None}
        started = time.monotonic()
        try:
            data = self._client.transport.perform_request(method, path, params=query, body=body,
                                                          timeout=self._timeout, headers=headers)
            status = 200
        except ose.SerializationError as exc:  # a success that is not JSON: a web server's page
            raise SetupError(f"ESINDEXER_ES_URL does not lead to OpenSearch: {method} {path} answered with a body "
                             f"that is not JSON ({exc}; wrong host, port or path?)") from None
        except ose.ConnectionTimeout as exc:
            raise TransportTimeout(_message(exc)) from None
        except ose.SSLError as exc:
            raise TransportTlsError(_message(exc)) from None
        except ose.ConnectionError as exc:
            raise TransportConnectionError(_message(exc)) from None
        except ose.TransportError as exc:
            if not isinstance(exc.status_code, int):
                raise TransportConnectionError(_message(exc)) from None
            meta = self._meta(exc.status_code, started)
            body_out = exc.info if isinstance(exc.info, (dict, str)) else str(exc.info)
            if exc.status_code in self._ignore:
                return ObjectApiResponse(body=body_out, meta=meta)
            error_type = HTTP_EXCEPTIONS.get(exc.status_code, ApiError)
            raise error_type(message=str(exc.error), meta=meta, body=body_out) from None
        return ObjectApiResponse(body=data, meta=self._meta(status, started))

    def _meta(self, status: int, started: float) -> ApiResponseMeta:
        host = self._client.transport.hosts[0] if self._client.transport.hosts else {}
        node = NodeConfig("http", str(host.get("host", "localhost")), int(host.get("port", 9200)))
        return ApiResponseMeta(status=status, http_version="1.1", headers=HttpHeaders(),
                               duration=time.monotonic() - started, node=node)

    def _exists(self, path: str, params: Mapping[str, Any] | None = None) -> bool:
        try:  # opensearch-py answers a HEAD with True, or False for a 404
            return bool(self.request("HEAD", path, params).body)
        except ApiError as exc:
            if exc.meta.status == 404:
                return False
            raise

    # -- what esindexer calls ---------------------------------------------------------

    def check_server(self) -> dict[str, Any]:
        """``GET /``: raise :class:`SetupError` unless the server says it is OpenSearch."""
        try:
            answer = self.request("GET", "/")
        except ApiError as exc:
            if exc.meta.status in (401, 403, 429, 502, 503, 504):
                raise
            raise SetupError(f"ESINDEXER_ES_URL does not lead to OpenSearch: GET / answered HTTP {exc.meta.status} "
                             "(wrong host, port or path?)") from None
        version = answer.body.get("version", {}) if isinstance(answer.body, dict) else {}
        if version.get("distribution") != "opensearch":
            raise SetupError("ESINDEXER_SEARCH_ENGINE is opensearch, but the server at ESINDEXER_ES_URL is not "
                             f"OpenSearch (GET / says distribution {version.get('distribution')!r}, version "
                             f"{version.get('number')!r}); set ESINDEXER_SEARCH_ENGINE=elasticsearch or auto")
        return dict(version)

    def bulk(self, *, operations: bytes | str, index: str | None = None, **params: Any) -> ObjectApiResponse[Any]:
        return self.request("POST", _path(index, "_bulk"), params, operations,
                            headers={"content-type": "application/x-ndjson"})

    def search(self, *, index: str | None = None, **kwargs: Any) -> ObjectApiResponse[Any]:
        body, params = _split(kwargs, _SEARCH_BODY)
        return self.request("POST", _path(index, "_search"), params, body)

    def count(self, *, index: str | None = None, query: Any = None, **params: Any) -> ObjectApiResponse[Any]:
        return self.request("POST", _path(index, "_count"), params, {"query": query} if query else None)

    def mget(self, *, docs: list[Any] | None = None, ids: list[str] | None = None, index: str | None = None,
             **params: Any) -> ObjectApiResponse[Any]:
        body = {"docs": docs} if docs is not None else {"ids": ids}
        return self.request("POST", _path(index, "_mget"), params, body)

    def get(self, *, index: str, id: str, **params: Any) -> ObjectApiResponse[Any]:
        return self.request("GET", _path(index, "_doc", id), params)

    def index(self, *, index: str, document: Any, id: str | None = None, **params: Any) -> ObjectApiResponse[Any]:
        return self.request("PUT" if id else "POST", _path(index, "_doc", id), params, document)

    def delete(self, *, index: str, id: str, **params: Any) -> ObjectApiResponse[Any]:
        return self.request("DELETE", _path(index, "_doc", id), params)


class _Namespace:
    def __init__(self, client: OpenSearchClient):
        self._c = client


class _Indices(_Namespace):
    def exists(self, *, index: str, **params: Any) -> bool:
        return self._c._exists(_path(index), params)

    def exists_alias(self, *, name: str, index: str | None = None, **params: Any) -> bool:
        return self._c._exists(_path(index, "_alias", name), params)

    def get(self, *, index: str, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("GET", _path(index), params)

    def get_alias(self, *, name: str | None = None, index: str | None = None, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("GET", _path(index, "_alias", name), params)

    def get_mapping(self, *, index: str, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("GET", _path(index, "_mapping"), params)

    def put_mapping(self, *, index: str, meta: Mapping[str, Any] | None = None,
                    properties: Mapping[str, Any] | None = None, **params: Any) -> ObjectApiResponse[Any]:
        body: dict[str, Any] = {}
        if meta is not None:
            body["_meta"] = dict(meta)
        if properties is not None:
            body["properties"] = dict(properties)
        return self._c.request("PUT", _path(index, "_mapping"), params, body)

    def get_settings(self, *, index: str, name: str | None = None, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("GET", _path(index, "_settings", name), params)

    def put_settings(self, *, index: str, settings: Mapping[str, Any], **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("PUT", _path(index, "_settings"), params, dict(settings))

    def create(self, *, index: str, settings: Any = None, mappings: Any = None, aliases: Any = None,
               **params: Any) -> ObjectApiResponse[Any]:
        body = {k: v for k, v in (("settings", settings), ("mappings", mappings), ("aliases", aliases)) if v}
        return self._c.request("PUT", _path(index), params, body or None)

    def delete(self, *, index: str, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("DELETE", _path(index), params)

    def close(self, *, index: str, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("POST", _path(index, "_close"), params)

    def open(self, *, index: str, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("POST", _path(index, "_open"), params)

    def refresh(self, *, index: str | None = None, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("POST", _path(index, "_refresh"), params)

    def segments(self, *, index: str | None = None, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("GET", _path(index, "_segments"), params)

    def stats(self, *, index: str | None = None, metric: str | None = None, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("GET", _path(index, "_stats", metric), params)

    def put_alias(self, *, index: str, name: str, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("PUT", _path(index, "_alias", name), params)

    def update_aliases(self, *, actions: list[Any], **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("POST", "/_aliases", params, {"actions": actions})

    def put_index_template(self, *, name: str, **body: Any) -> ObjectApiResponse[Any]:
        return self._c.request("PUT", _path("_index_template", name), None, body)

    def get_index_template(self, *, name: str | None = None, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("GET", _path("_index_template", name), params)

    def delete_index_template(self, *, name: str, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("DELETE", _path("_index_template", name), params)


class _Cluster(_Namespace):
    def health(self, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("GET", "/_cluster/health", params)

    def put_settings(self, *, persistent: Any = None, transient: Any = None, **params: Any) -> ObjectApiResponse[Any]:
        body = {k: v for k, v in (("persistent", persistent), ("transient", transient)) if v is not None}
        return self._c.request("PUT", "/_cluster/settings", params, body)


class _Ingest(_Namespace):
    def get_pipeline(self, *, id: str, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("GET", _path("_ingest", "pipeline", id), params)

    def put_pipeline(self, *, id: str, **body: Any) -> ObjectApiResponse[Any]:
        return self._c.request("PUT", _path("_ingest", "pipeline", id), None, body)

    def delete_pipeline(self, *, id: str, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("DELETE", _path("_ingest", "pipeline", id), params)


class _Nodes(_Namespace):
    def info(self, *, node_id: str | None = None, metric: str | None = None, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("GET", _path("_nodes", node_id, metric), params)

    def stats(self, *, node_id: str | None = None, metric: str | None = None, **params: Any) -> ObjectApiResponse[Any]:
        return self._c.request("GET", _path("_nodes", node_id, "stats", metric), params)


def _split(kwargs: Mapping[str, Any], body_keys: Iterable[str]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The Elasticsearch client's keyword arguments as (request body, query parameters)."""
    keys = set(body_keys)
    body = {("from" if k == "from_" else "_source" if k == "source" else k): v
            for k, v in kwargs.items() if k in keys and v is not None}
    return body or None, {k: v for k, v in kwargs.items() if k not in keys}


def _message(exc: Exception) -> str:
    """The reason inside an opensearch-py connection error (its str() is a tuple's)."""
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if len(args) >= 3 and args[2] is not None:  # ("N/A", str(cause), cause): the cause says it all
        return str(args[2])
    return str(args[1]) if len(args) >= 2 else str(exc)


def _opensearch(settings: Settings, timeout: float) -> OpenSearch:
    from opensearchpy import OpenSearch

    if settings.es_api_key:
        raise SetupError("OpenSearch has no API keys: give ESINDEXER_ES_USERNAME and ESINDEXER_ES_PASSWORD "
                         "(the security plugin's basic auth) instead of ESINDEXER_ES_API_KEY")
    https = any(urlsplit(url).scheme == "https" for url in settings.es_url)
    kwargs: dict[str, Any] = dict(
        hosts=list(settings.es_url), timeout=timeout, max_retries=0, retry_on_timeout=False,
        use_ssl=https, verify_certs=settings.es_verify_certs, ssl_show_warn=False,
        # one connection per concurrent bulk sender and a few for the other threads
        pool_maxsize=max(10, settings.bulk_concurrency + 4),
    )
    if settings.es_ca_file:
        kwargs["ca_certs"] = settings.es_ca_file
    if settings.es_username:
        kwargs["http_auth"] = (settings.es_username, settings.es_password or "")
    return OpenSearch(**kwargs)


def detect_engine(settings: Settings) -> str:
    """``opensearch`` when ``GET /`` says ``"distribution": "opensearch"``, else
    ``elasticsearch`` (whose integ-test build has no ``GET /`` at all: any other answer
    means Elasticsearch, or something :func:`esindexer.es.client.check_elasticsearch`
    will name). Unreachable: the connection error, which the caller reports. An API key
    means Elasticsearch: OpenSearch has none."""
    if settings.es_api_key:
        return "elasticsearch"
    client = OpenSearchClient(_opensearch(settings, min(settings.es_request_timeout, 10.0)),
                              request_timeout=min(settings.es_request_timeout, 10.0))
    try:
        answer = client.request("GET", "/")
    except ApiError:
        return "elasticsearch"
    finally:
        client.close()
    version = answer.body.get("version", {}) if isinstance(answer.body, dict) else {}
    return "opensearch" if isinstance(version, dict) and version.get("distribution") == "opensearch" \
        else "elasticsearch"
