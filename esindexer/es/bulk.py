"""Bulk requests: send actions to Elasticsearch and account for every item.

Elasticsearch answers a bulk request with HTTP 200 even when items fail, so each
item is classified on its own:

=====================  ==========================================================
item answer            outcome
=====================  ==========================================================
200/201                written
404 on a delete        nothing to delete: done
409                    a newer (or the same) version is already there: done
429, 5xx               retried (only those items), with back-off
index closed, write-   retried the same way: the index, not the document, is at fault
blocked or missing     (closed for maintenance, a write block during a shrink, an index
                       deleted while auto-creation is off); progress waits, lag shows it
403 (security)         the role lost a privilege on the index: the send raises SetupError
                       (the service stops with exit 2) instead of dead-lettering everything
anything else          rejected for good (mapping error, document too large ...):
                       a dead letter; the rest of the request is unaffected
=====================  ==========================================================

Whole-request failures (connection refused, timeouts, HTTP 429/5xx) are retried
with capped exponential back-off and jitter, forever by default. While a request
retries, the service's progress stays where it is.

HTTP 413 (request too large: the server's or a proxy's ``http.max_content_length``
is below ``bulk_max_bytes``) splits the request, and the sender *remembers*: from
then on it sends at most half the refused size, so a misjudged limit costs one
refused request per process, not one per batch. A single action that is refused on
its own is a dead letter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from elasticsearch import ApiError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_never

from esindexer.backoff import Backoff
from esindexer.documents import Action
from esindexer.errors import Abandoned, RetryableItems, SetupError
from esindexer.es.client import connection_hint, describe_error, retry_reason
from esindexer.sink import Rejected, SendResult

log = logging.getLogger(__name__)

_DONE_STATUSES = {200, 201}

#: Item errors that describe the target index, not the document: retried, never
#: dead-lettered (dead-lettering a whole index's worth of documents would trip the
#: error budget and leave the operator a table to replay instead of a lag to watch).
_INDEX_CONDITIONS = {
    "index_closed_exception": "index_closed",
    "cluster_block_exception": "index_blocked",
    "index_not_found_exception": "index_missing",
}
#: What the operator can do about each condition (said in the retry warning).
_CONDITION_HINTS = {
    "index_closed": "open it (POST /{index}/_open)",
    "index_blocked": "lift the block: free disk space if the flood-stage watermark set "
                     "index.blocks.read_only_allow_delete, or reset index.blocks.write on {index}",
    "index_missing": "it was deleted and auto-creation is off: restart esindexer to create it again, "
                     "then run `esindexer verify --repair` to put back what it held",
}


#: Longest wait between two tries of items whose index is unwritable. Such a retry costs
#: Elasticsearch nothing (it refuses at once), and a block is lifted by an operator who
#: expects writes to resume within seconds, not after the load back-off's minute.
INDEX_CONDITION_RECHECK_SECONDS = 5.0


def _is_security_refusal(error: Any) -> bool:
    return isinstance(error, dict) and error.get("type") == "security_exception"


def _index_condition(error: Any) -> str | None:
    """A short label when an item failed because of its index's state, else None."""
    if isinstance(error, dict):
        return _INDEX_CONDITIONS.get(error.get("type", ""))
    return None


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        cause = error.get("caused_by")
        if isinstance(cause, dict):
            text += f" (caused by {cause.get('type')}: {cause.get('reason')})"
        return text
    return str(error)


class BulkSender:
    """Sends actions as bulk requests, retrying what is transient, until each is settled.

    ``stop`` is an event the service sets on shutdown: back-off sleeps wake up and the
    send raises :class:`Abandoned`, leaving progress where it was.
    """

    def __init__(self, es: Elasticsearch, *, retry_max_seconds: float = 60.0, retry_attempts: int = 0,
                 stop: threading.Event | None = None,
                 on_retry: Callable[[str, BaseException], None] | None = None,
                 on_request: Callable[[str, float], None] | None = None):
        self._es = es
        self._stop = stop or threading.Event()
        self._on_retry = on_retry
        self._on_request = on_request
        self._retry_max = retry_max_seconds
        self._backoff = Backoff(first=1.0, maximum=retry_max_seconds, jitter=True)
        self._attempts = retry_attempts
        self._learned_max_bytes: int | None = None
        self._limit_lock = threading.Lock()

    @property
    def learned_max_bytes(self) -> int | None:
        """The request size a 413 taught us to stay under (None: no 413 seen yet)."""
        return self._learned_max_bytes

    def _learn_from_413(self, refused_bytes: int) -> None:
        limit = max(1, refused_bytes // 2)
        with self._limit_lock:
            if self._learned_max_bytes is not None and self._learned_max_bytes <= limit:
                return
            self._learned_max_bytes = limit
        log.warning("Elasticsearch refused a %d-byte bulk request (HTTP 413); sending at most %d "
                    "bytes per request from now on. Set ESINDEXER_BULK_MAX_BYTES below the server's "
                    "(or proxy's) request size limit to avoid this.", refused_bytes, limit,
                    extra={"refused_bytes": refused_bytes, "max_bytes": limit})

    def _chunks(self, actions: list[Action]) -> list[list[Action]]:
        """``actions`` cut into requests under the learned size limit (one if none)."""
        limit = self._learned_max_bytes
        if limit is None:
            return [actions]
        chunks: list[list[Action]] = []
        current: list[Action] = []
        size = 0
        for action in actions:
            action_size = action.size()
            if current and size + action_size > limit:
                chunks.append(current)
                current, size = [], 0
            current.append(action)
            size += action_size
        if current:
            chunks.append(current)
        return chunks

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Abandoned("backing off after an Elasticsearch error (the request was not acknowledged)")

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = retry_reason(exc) if exc else "unknown"
        wait = state.next_action.sleep if state.next_action else 0
        hint = connection_hint(exc) if exc else ""
        log.warning("bulk request failed (%s: %s); retry %d in %.1fs, progress frozen%s", reason,
                    describe_error(exc) if exc else "", state.attempt_number, wait, f"; {hint}" if hint else "",
                    extra={"reason": reason, "attempt": state.attempt_number})
        if self._on_retry and exc is not None:
            self._on_retry(reason or "unknown", exc)

    def send(self, actions: Sequence[Action]) -> SendResult:
        result = SendResult()
        if not actions:
            return result
        started = time.monotonic()
        for chunk in self._chunks(list(actions)):
            self._send_splitting(chunk, result)
        result.seconds = time.monotonic() - started
        return result

    def _send_splitting(self, actions: list[Action], result: SendResult) -> None:
        try:
            self._send_with_retries(actions, result)
            return
        except ApiError as exc:
            status = exc.meta.status
            if status not in (413, 400):
                raise
            detail = _error_text(getattr(exc, "body", None) or str(exc))
            _drop_frames(exc)
        # The parts are sent outside the except block, with the refused request's frames
        # dropped: each level of splitting kept its whole request body alive through the
        # exception's traceback, several times the size of one huge document (issue 21).
        if len(actions) == 1:
            result.rejected.append(Rejected(actions[0], status, f"HTTP {status}: {detail}"))
            return
        if status == 413:
            self._learn_from_413(sum(action.size() for action in actions))
            parts = self._chunks(actions)
            if len(parts) == 1:  # a limit learned from a larger request: halve this one
                parts = [actions[: len(actions) // 2], actions[len(actions) // 2:]]
        else:
            # Unparseable as a whole: halve until the culprit stands alone.
            log.warning("bulk request refused with HTTP 400; splitting %d actions", len(actions))
            parts = [actions[: len(actions) // 2], actions[len(actions) // 2:]]
        for part in parts:
            self._send_splitting(part, result)

    def _send_with_retries(self, actions: list[Action], result: SendResult) -> None:
        pending = actions
        retrying = Retrying(
            retry=retry_if_exception(lambda e: retry_reason(e) is not None),
            wait=self._wait,
            stop=stop_never if self._attempts <= 0 else stop_after_attempt(self._attempts),
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                try:
                    self._send_once(pending, result)
                except RetryableItems as exc:
                    pending = exc.again  # the next attempt sends only these
                    raise

    def _wait(self, state: RetryCallState) -> float:
        """Capped exponential back-off with jitter; unwritable indices are re-checked sooner."""
        delay = self._backoff.delay(state.attempt_number)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RetryableItems) and exc.index_conditions_only:
            return min(delay, INDEX_CONDITION_RECHECK_SECONDS)
        return delay

    def _send_once(self, actions: list[Action], result: SendResult) -> None:
        """One request. Settles into ``result`` what it can; raises :class:`RetryableItems`
        carrying the actions to send again, or the transport's error for the whole request."""
        body = bulk_body(actions)
        started = time.monotonic()
        try:
            response = self._es.bulk(
                operations=body,  # type: ignore[arg-type]  # a pre-serialised NDJSON body is sent as is
                filter_path="errors,items.*.status,items.*.error",
            )
        except Exception as exc:
            if self._on_request:
                self._on_request("retried" if retry_reason(exc) else "failed", time.monotonic() - started)
            raise
        result.requests += 1
        body_json = response.body if hasattr(response, "body") else response
        if not body_json.get("errors"):
            result.settle(actions)
            if self._on_request:
                self._on_request("ok", time.monotonic() - started)
            return
        again: list[Action] = []
        reasons: set[str] = set()
        hints: dict[str, str] = {}
        for action, item in zip(actions, body_json["items"]):
            answer = next(iter(item.values()))
            status = answer.get("status", 0)
            if status in _DONE_STATUSES or status == 409 or (status == 404 and action.op == "delete"):
                result.done[action.op] += 1
                result.touched.add(action.index)
            elif (condition := _index_condition(answer.get("error"))) is not None:
                # Before the 429 test: a flood-stage block answers 429 with a
                # cluster_block_exception, and it is the index that must change.
                again.append(action)
                reasons.add(condition)
                hints.setdefault(condition, f"index {action.index} unwritable: "
                                 + _CONDITION_HINTS[condition].format(index=action.index))
            elif status == 429 or status >= 500:
                again.append(action)
                reasons.add(str(status))
            elif _is_security_refusal(answer.get("error")):
                # A privilege missing for this index (a role changed while running): every
                # document would follow this one into the dead-letter table. Stop instead.
                raise SetupError(f"Elasticsearch refused to write to {action.index}: "
                                 f"{_error_text(answer.get('error'))}; esindexer needs write, create_index, "
                                 "read, view_index_metadata and manage on its indices (docs/configuration.md)")
            else:
                result.rejected.append(Rejected(action, status, _error_text(answer.get("error"))))
        if self._on_request:
            self._on_request("retried" if again else "ok", time.monotonic() - started)
        if again:
            pending_reason = "/".join(sorted(reasons))
            raise RetryableItems(len(again), pending_reason, "; ".join(hints.values()),
                                 index_conditions_only=reasons <= set(_INDEX_CONDITIONS.values()), again=again)


def _drop_frames(exc: BaseException) -> None:
    """Forget the tracebacks of ``exc`` and the exceptions chained to it: their frames
    hold the request body, and the retry state keeps the exception in a reference cycle
    that only the cycle collector would free."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        todo += (e.__cause__, e.__context__)


def metadata_line(action: Action) -> bytes:
    """The bulk metadata line of ``action``: versioned by tid (``external_gte``).

    ``orjson.dumps({op: {"_index": index, "_id": str(zoid), "version": version,
    "version_type": "external_gte"}})``, byte for byte, written from a prefix made once
    per operation and index (one line per document: the dict and its serialisation were
    the sender's largest cost per item)."""
    return _line_prefix(action.op, action.index) + b'%d","version":%d,"version_type":"external_gte"}}' % (
        action.zoid, action.version)


_PREFIXES: dict[tuple[str, str], bytes] = {}


def _line_prefix(op: str, index: str) -> bytes:
    prefix = _PREFIXES.get((op, index))
    if prefix is None:
        prefix = b"{" + orjson.dumps(op) + b':{"_index":' + orjson.dumps(index) + b',"_id":"'
        if len(_PREFIXES) >= 1024:
            _PREFIXES.clear()
        _PREFIXES[(op, index)] = prefix
    return prefix


def iter_lines(actions: Iterable[Action]) -> Iterable[bytes]:
    """NDJSON lines of a bulk body."""
    for action in actions:
        yield metadata_line(action)
        if action.source is not None:
            yield action.source


def bulk_body(actions: Iterable[Action]) -> bytes:
    """The NDJSON body of a bulk request, ending in a newline, in one allocation."""
    lines: list[bytes] = []
    append = lines.append
    prefixes = _PREFIXES
    for op, index, zoid, _tid, version, _class, source in actions:
        prefix = prefixes.get((op, index)) or _line_prefix(op, index)
        append(prefix + b'%d","version":%d,"version_type":"external_gte"}}' % (zoid, version))
        if source is not None:
            append(source)
    append(b"")
    return b"\n".join(lines)

