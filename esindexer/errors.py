"""Setup errors: Elasticsearch answers, but not as the configuration needs, and no retry can help.

Transient trouble (unreachable, timeouts, 429, 5xx) is retried for ever with the
progress frozen; that is right for outages and wrong for a wrong password, a missing
privilege or a certificate nobody vouches for: retrying those only hides them behind
a growing lag. They stop the command with exit code 2 and one line that says what to
change.
"""

from __future__ import annotations

from elastic_transport import TlsError
from elasticsearch import ApiError


class SetupError(Exception):
    """Elasticsearch is reachable but not set up as the configuration requires."""


def as_setup_error(exc: BaseException) -> SetupError | None:
    """The :class:`SetupError` ``exc`` amounts to, or None when it is something else."""
    if isinstance(exc, SetupError):
        return exc
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
    return text.splitlines()[0][:300] if text else type(exc).__name__
