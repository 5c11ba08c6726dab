"""A live user of the test application: a thread committing moves, renames, removals,
additions and part edits, as ``tests/pipeline/processes.LiveWriter`` does for pages.

The writer works in its own areas (``AREAS``: /f1, /f2, /a1); the test's own operations
(``AppWriter.do``), e.g. the removals whose latency it measures, take the writer's lock, so
nothing conflicts and a pack never runs beside a commit (see ``LiveWriter`` on why).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import transaction
from ZODB.POSException import ConflictError

from tests.objects import corpus
from tests.support import open_zodb

AREAS = ("/f1/", "/f2/", "/a1/")
DESTS = ["/f1/sub", "/f2", "/a1/f", "/f1/box", "/a1", "/f1"]
OPS = {"title": 3, "body": 3, "transition": 2, "annotate": 2, "move": 3, "rename": 2, "remove": 2, "add": 3,
       "move-folder": 1}


class AppWriter:
    def __init__(self, dsn: str, keep_history: bool, item_paths: list[str], seed: int = 7, rate: float = 15.0):
        self.db = open_zodb(dsn, keep_history)
        self.rate = rate
        self.paths = [p for p in item_paths if p.startswith(AREAS)]
        self.deep = "/f1/sub/deep"  # an AttrFolder moved back and forth with its items
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        self._rng = random.Random(seed)
        self._next = 100_000
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._main_tm = transaction.TransactionManager()
        self._main = self.db.open(self._main_tm)

    # -- the test's own operations -------------------------------------------------------
    def do(self, change, note: str = ""):
        """Run ``change(root)`` in the test's connection under the writer's lock and commit;
        return its result and the commit's end (``time.monotonic()``)."""
        with self.lock:
            result = _retry(self._main_tm, self._main, change)
            return result, time.monotonic()

    def pack(self) -> None:
        with self.lock:
            self.db.pack()
        self.counts["pack"] += 1

    def read(self, reader):
        with self.lock:
            self._main_tm.begin()
            try:
                return reader(self._main.root())
            finally:
                self._main_tm.abort()

    # -- the thread ----------------------------------------------------------------------
    def start(self) -> AppWriter:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="app-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self, check: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        if check and self._error is not None:
            raise self._error

    def close(self) -> None:
        self.stop(check=False)
        self._main_tm.abort()
        self._main.close()
        self.db.close()

    def _run(self) -> None:
        tm = transaction.TransactionManager()
        conn = self.db.open(tm)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                with self.lock:
                    op, paths, deep = _retry(tm, conn, self._round)
                    self.paths, self.deep = paths, deep
                    self.counts[op] += 1
                self._stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - started)))
        except BaseException as exc:  # raised by stop()
            self._error = exc
        finally:
            tm.abort()
            conn.close()

    def _round(self, root):
        """One random change; returns (op, the item paths after it, the deep folder's path)."""
        rng, n = self._rng, self._next
        self._next += 1
        paths, deep = list(self.paths), self.deep
        op = rng.choices(list(OPS), list(OPS.values()))[0]
        path = rng.choice(paths)
        parent = path.rpartition("/")[0]
        when = datetime(2025, 1, 1, tzinfo=UTC)
        if op == "title":
            corpus.edit_title(root, path, f"Changed title {n}")
        elif op == "body":
            corpus.edit_body(root, path, f"<p>rewritten body {corpus.BODY_WORDS[n % 16]} w{n}</p>")
        elif op == "transition":
            corpus.transition(root, path, "publish", rng.choice(["published", "pending", "private"]), when)
        elif op == "annotate":
            corpus.annotate(root, path, "app.behaviors.language", "lang", rng.choice(["it", "es", "nl"]))
        elif op == "move":
            dest = rng.choice([d for d in [*DESTS, deep] if d != parent])
            paths[paths.index(path)] = corpus.move(root, path, dest)
        elif op == "rename":
            paths[paths.index(path)] = corpus.rename(root, path, f"{path.rsplit('/', 1)[1].split('~')[0]}~{n}")
        elif op == "remove" and len(paths) > 50:
            corpus.remove(root, path)
            paths.remove(path)
        elif op == "add":
            item = corpus.make_item(n, rng)
            dest = rng.choice([*DESTS, deep])
            corpus.attach(corpus.resolve(root, dest), item.id, item)
            root["registry"].register(item)
            paths.append(f"{dest}/{item.id}")
        elif op == "move-folder":
            target = "/f2" if deep.startswith("/f1/") else "/f1/sub"
            new = corpus.move(root, deep, target)
            paths = [new + p[len(deep):] if p.startswith(deep + "/") else p for p in paths]
            deep = new
        else:
            op = "skip"
        return op, paths, deep


def _retry(tm, conn, change, attempts: int = 5):
    for attempt in range(attempts):
        tm.begin()
        try:
            result = change(conn.root())
            tm.commit()
            return result
        except ConflictError:
            tm.abort()
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
        except BaseException:
            tm.abort()
            raise
    raise AssertionError("unreachable")
