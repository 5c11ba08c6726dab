"""Redaction: the one function that removes secrets from any text esindexer prints.

Everything that can carry a setting or a connection string goes through
:func:`redact` before it is printed or logged: ``esindexer config``, the start-up log
line, every log line (the formatters apply it), error messages of the command line,
``/readyz`` and the last-retry text in metrics. It recognises:

- passwords in URL user-info: ``postgresql://zodb:secret@db/zodb``,
  ``http://elastic:secret@es:9200`` (the user name stays: it helps and is not secret);
- password parameters in a URI query: ``postgresql://zodb@db/zodb?password=secret``;
- password parameters in a key=value DSN, quoted or not:
  ``host=db password='s e c r e t' user=zodb`` (also ``sslpassword``);
- API keys written as ``api_key=...`` / ``ApiKey ...`` (an Authorization header value).
"""

from __future__ import annotations

import re

REDACTED = "***"

_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:@/\s'\"]*):(?P<secret>[^@/\s'\"]*)@")
_PARAMETER = re.compile(
    r"(?i)(?P<head>\b(?:ssl)?(?:password|passwd|pwd|api_key|apikey)\s*=\s*)"
    r"(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;,'\"]+)"
)
_AUTH_HEADER = re.compile(r"(?i)(?P<head>\b(?:ApiKey|Basic|Bearer)\s+)(?P<secret>[A-Za-z0-9+/=._~-]{8,})")


def redact(text: str) -> str:
    """``text`` with every password and API key it contains replaced by ``***``."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    text = _PARAMETER.sub(lambda m: m["head"] + REDACTED, text)
    return _AUTH_HEADER.sub(lambda m: m["head"] + REDACTED, text)
