"""Convert records in a child process, so that a record which kills the converter kills only the child.

The service converts records in its own process: the pickle pre-scan, CPython's C
unpickler, orjson, a configured ``transform``. A record that makes native code crash
(SIGSEGV, SIGABRT) or allocate until the kernel's OOM killer steps in takes the whole
service with it, before any Python code can dead-letter the record. The crash guard
(:mod:`esindexer.pipeline.crashguard`) notices the resulting restart loop and has the suspect range
converted here instead:

- A **child process** (a fresh interpreter started with ``subprocess``: nothing inherited
  from the parent's threads, and the parent's main module is not run again) builds the
  same Jsonifier and DocumentBuilder from the same settings, and talks to the parent
  over a socket pair with ``multiprocessing.connection`` framing (pickled messages). The
  parent sends it chunks of rows; the child
  converts them in order and sends back the results (a conversion outcome and, for an
  indexed object, the bulk action with its serialised document) in groups of
  :data:`GROUP_ROWS`. So every byte of per-record native work (unpickling, JSON, the
  transform, the document's serialisation) happens in the child.
- When the child **dies**, every row it answered is done, and the record that killed it
  is among the next :data:`GROUP_ROWS` (the group it had not sent yet). Those rows go
  to a fresh child in *careful* mode, one result per row as soon as the row is done:
  if it dies again, the first row it did not answer is the suspect. The suspect is
  converted once more, on its own, in a fresh child. If that child dies too, the
  record is the cause: it is returned as kind ``crashed`` with the signal or exit code
  as its reason, and the service dead-letters it. If it converts on its own, the crash
  was not that record's alone (memory grown over many records, a one-off kill) and its
  result is used. Either way the remaining rows go on in a fresh child: isolating a
  crasher costs three process starts and the re-conversion of at most one group,
  fewer than bisecting a chunk, and rows the child answered are never converted again.

The child ignores SIGINT and SIGTERM (a Ctrl-C or a ``systemd`` stop signals the whole
process group: only the parent decides when to stop) and exits when the parent closes
the socket or dies. ``faulthandler`` is on in the child, so a native crash also prints the
Python stack of the record being converted to the service's stderr.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from esindexer.config import Settings
from esindexer.convert.jsonifier import Conversion, Jsonifier, Kind
from esindexer.documents import Action, DocumentBuilder
from esindexer.errors import Abandoned, ChildFailed
from esindexer.source.pages import Row

if TYPE_CHECKING:
    import subprocess
    from multiprocessing.connection import Connection

log = logging.getLogger(__name__)

#: What the row loop consumes: the row, its conversion and, for ``ok``, the index action.
#: A record that killed the converter's process has kind ``crashed`` (``error`` says how).
Record = tuple[int, int, "bytes | None", Conversion, "Action | None"]
#: A child's answer for one row: ``(kind, class_name, error, index, source)``; the index
#: and the document source are set for kind ``ok`` only, the error for the others.
Result = tuple[str, "str | None", "str | None", "str | None", "bytes | None"]
#: A message from the child: ``("ready", None)``, ``("failed", reason)``,
#: ``("raise", reason)`` or ``("done", [Result, ...])``.
Message = tuple[str, Any]

#: Rows per message to the child, and the bytes of record data after which a chunk ends early.
CHUNK_ROWS = 200
CHUNK_BYTES = 4 * 1024 * 1024
#: Results per message from the child (one per message halves throughput); a careful
#: pass after a death sends each at once.
GROUP_ROWS = 32
_POLL_SECONDS = 0.5
_START_TIMEOUT = 120.0


def convert_in_process(jsonifier: Jsonifier, builder: DocumentBuilder, rows: Iterable[Row]) -> Iterator[Record]:
    """The normal path: convert and build in this process, one :data:`Record` per row
    (:meth:`DocumentBuilder.record`: an ok record comes with its action)."""
    record = builder.record
    for tid, zoid, data in rows:
        conversion, action = record(jsonifier, tid, zoid, data)
        yield tid, zoid, data, conversion, action


def death_reason(exitcode: int | None) -> str:
    """``killed by signal SIGSEGV`` / ``exited with code 3`` for a child's exit code."""
    if exitcode is None:
        return "died (exit status unknown)"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class IsolatedConverter:
    """Converts rows in a child process and survives records that kill it.

    ``records(rows)`` yields one :data:`Record` per row, in order, exactly as
    :func:`convert_in_process` would, except that a record whose conversion kills the
    child (among others, and again alone) comes back as kind ``crashed``.
    ``on_crash(tid, zoid, reason)`` is called for each such record. When ``cancel`` (an
    event: the service's "abandon") is set, a wait for the child ends it and raises
    :class:`~esindexer.errors.Abandoned`. :meth:`close` ends the child. One instance is
    used by one thread at a time.
    """

    def __init__(self, settings: Settings, cancel: threading.Event | None = None,
                 on_crash: Callable[[int, int, str], None] | None = None) -> None:
        self.settings = settings
        self.cancel = cancel
        self.on_crash = on_crash
        self.crashed = 0  # records isolated by this converter
        self._child: _Child | None = None

    def close(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.close()

    def records(self, rows: Iterable[Row]) -> Iterator[Record]:
        source = iter(rows)
        unsent: collections.deque[Row] = collections.deque()  # rows to (re)send, in order
        careful = 0  # rows (at the head of unsent) to convert answering each at once
        in_chunk = False
        try:
            while True:
                chunk = _take(unsent, source, careful or CHUNK_ROWS)
                if not chunk:
                    return
                group = 1 if careful else GROUP_ROWS
                careful = 0
                child = self._running_child()
                answered = 0
                in_chunk = True
                for result in child.convert(chunk, group, self.cancel):
                    yield _record(chunk[answered], result)
                    answered += 1
                in_chunk = False
                if answered == len(chunk):
                    continue
                self._child = None
                reason = death_reason(child.close())
                if group > 1:  # the record that killed it is in the group it had not sent
                    unanswered = chunk[answered:]
                    unsent.extendleft(reversed(unanswered))
                    careful = min(group, len(unanswered))
                    continue
                # Careful: the child died on chunk[answered] (or just after answering it).
                yield self._alone(chunk[answered], reason)
                unsent.extendleft(reversed(chunk[answered + 1:]))
        finally:
            if in_chunk:  # left part-way (an exception, or the caller stopped): unread answers
                self.close()  # would be taken for the next rows' answers

    def _running_child(self) -> _Child:
        if self._child is None:
            self._child = _Child.start(self.settings, self.cancel)
        return self._child

    def _alone(self, row: Row, first_reason: str) -> Record:
        """Convert ``row`` in a fresh child of its own; kind ``crashed`` if that child dies too."""
        tid, zoid, _data = row
        child = _Child.start(self.settings, self.cancel)
        results = list(child.convert([row], 1, self.cancel))
        if results:
            self._child = child  # healthy: it takes the next rows
            log.warning("the conversion process %s while converting zoid %d at tid %d or the records before "
                        "it, but that record converts on its own: not treated as the cause", first_reason,
                        zoid, tid, extra={"zoid": zoid, "tid": tid, "reason": first_reason})
            return _record(row, results[0])
        reason = death_reason(child.close())
        message = (f"converting this record ended the converter's process ({reason}), among other records "
                   "and then alone (isolated by the crash guard)")
        self.crashed += 1
        if self.on_crash is not None:
            self.on_crash(tid, zoid, message)
        return tid, zoid, row[2], Conversion(Kind.CRASHED, class_hint(row[2]), None, None, message), None


def class_hint(data: bytes | None) -> str | None:
    """The class a record names, read without unpickling (for a record that crashes the
    unpickler): the first GLOBAL or STACK_GLOBAL of its class pickle, or None."""
    import pickletools

    if not data:
        return None
    strings: list[str] = []
    try:
        for opcode, arg, _pos in pickletools.genops(data[:4096]):
            if opcode.name == "GLOBAL":
                return str(arg).replace(" ", ".", 1)
            if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if isinstance(arg, str) and "UNICODE" in opcode.name:
                strings.append(arg)
            if opcode.name == "STOP":
                return None
    except Exception:  # malformed or cut short: no hint
        return None
    return None


def _take(unsent: collections.deque[Row], source: Iterator[Row], limit: int) -> list[Row]:
    """The next chunk: rows to resend first, then new rows, up to ``limit`` rows and
    about :data:`CHUNK_BYTES`."""
    chunk: list[Row] = []
    size = 0
    row: Row | None
    while len(chunk) < limit and size < CHUNK_BYTES:
        if unsent:
            row = unsent.popleft()
        else:
            row = next(source, None)
            if row is None:
                break
        chunk.append(row)
        size += len(row[2] or b"")
    return chunk


def _record(row: Row, result: Result) -> Record:
    """A child's answer for ``row`` as a :data:`Record`."""
    tid, zoid, data = row
    kind, class_name, error, index, source = result
    if kind == "ok" and index is None:  # documents=objects: the converted JSON, for the object graph
        assert source is not None
        return tid, zoid, data, Conversion(Kind.OK, class_name, source.decode(), None, None), None
    if kind == "ok":
        assert index is not None  # the child sends the index of every ok result it built
        action: Action | None = Action("index", index, zoid, tid, tid, class_name, source)
    else:
        action = None
    return tid, zoid, data, Conversion(Kind(kind), class_name, None, None, error), action


class _Child:
    """One child process and the parent's end of its socket."""

    def __init__(self, process: subprocess.Popen[bytes], conn: Connection[object, Message]) -> None:
        self.process = process
        self.conn = conn

    @classmethod
    def start(cls, settings: Settings, cancel: threading.Event | None) -> _Child:
        """Start ``python -c`` with one end of a socket pair.

        A plain subprocess rather than multiprocessing's spawn: spawn runs the parent's
        main module again in the child, which an application embedding the Indexer may
        not be written for. The child gets the parent's ``sys.path`` (a transform may live
        on it) and the settings as its first message.
        """
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        parent_end, child_end = socket.socketpair()
        fd = child_end.fileno()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from esindexer.pipeline.isolate import child_main; "
                 "child_main(int(sys.argv[1]))", str(fd)],
                pass_fds=(fd,), stdin=subprocess.DEVNULL)
        finally:
            child_end.close()
        child = cls(process, Connection(parent_end.detach()))
        try:
            child.conn.send((list(sys.path), settings))
            message = child._receive(cancel, timeout=_START_TIMEOUT)
        except BaseException:
            child.close()
            raise
        if message is None or message[0] != "ready":
            code = child.close()
            detail = message[1] if message is not None else death_reason(code)
            raise ChildFailed(f"the conversion child process could not start: {detail}")
        return child

    def convert(self, chunk: list[Row], group: int, cancel: threading.Event | None) -> Iterator[Result]:
        """The child's results for ``chunk``, in order, ``group`` per message; fewer than
        sent when the child dies."""
        try:
            self.conn.send((chunk, group))
        except OSError:  # died already: the reads below see the end of the socket
            pass
        left = len(chunk)
        while left:
            message = self._receive(cancel)
            if message is None:
                return
            if message[0] == "raise":
                self.close()
                raise ChildFailed(f"the conversion child process raised {message[1]}")
            left -= len(message[1])
            yield from message[1]

    def _receive(self, cancel: threading.Event | None, timeout: float | None = None) -> Message | None:
        """The next message, or None when the child has gone."""
        waited = 0.0
        while True:
            try:
                if self.conn.poll(_POLL_SECONDS):
                    return self.conn.recv()
            except (EOFError, OSError):
                return None
            if cancel is not None and cancel.is_set():
                self.close()
                raise Abandoned("converting in the child process (abandoned)")
            waited += _POLL_SECONDS
            if timeout is not None and waited >= timeout:
                self.close()
                raise ChildFailed(f"the conversion child process did not start within {timeout:.0f}s")

    def close(self) -> int | None:
        """End the child (if still running) and return its exit code (negative: a signal)."""
        self.conn.close()  # a healthy child exits when its socket closes
        try:
            return self.process.wait(5)
        except Exception:
            self.process.kill()
            return self.process.wait(5)


def child_main(fd: int) -> None:
    """Entry point of the child process: ``fd`` is its end of the socket to the parent."""
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent alone decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        path, settings = conn.recv()
    except (EOFError, OSError):
        return
    import sys

    sys.path[:] = path
    _child_main(conn, settings)


def _child_main(conn: Any, settings: Settings) -> None:
    """The child: convert chunks of rows until the socket closes."""
    import faulthandler

    faulthandler.enable()
    try:
        from esindexer.convert.configure import build_jsonifier

        jsonifier = build_jsonifier(settings)
        builder = DocumentBuilder(settings)
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    record = builder.record
    convert = jsonifier.convert
    objects = settings.documents == "objects"
    while True:
        try:
            chunk, group = conn.recv()
        except (EOFError, OSError):
            return
        done: list[Result] = []
        for tid, zoid, data in chunk:
            try:
                result: Result
                if objects:  # the object reader builds documents from the graph: it needs the JSON
                    c, action = convert((tid, zoid), data), None
                    if c.kind == "ok":
                        assert c.json_text is not None
                        result = ("ok", c.class_name, None, None, c.json_text.encode())
                    else:
                        result = (c.kind, c.class_name, c.error, None, None)
                else:
                    c, action = record(jsonifier, tid, zoid, data)  # as in convert_in_process
                    if action is not None:
                        result = ("ok", c.class_name, None, action.index, action.source)
                    else:
                        result = (c.kind, c.class_name, c.error, None, None)
            except Exception as exc:  # the in-process path would raise it too
                conn.send(("raise", f"{type(exc).__name__}: {exc}"))
                return
            done.append(result)
            if len(done) >= group:
                conn.send(("done", done))
                done = []
        if done:
            conn.send(("done", done))
