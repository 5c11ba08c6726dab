"""What the re-index tests share: ``esindexer reindex`` run as an operator runs it (a
process whose lines are read as they come, since the operator acts on one of them) and
a poller that searches the alias every half second, as users do during the switch."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from tests.support import esindexer_env


class ReindexProcess:
    """``python -m esindexer reindex ARGS`` with its output collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "esindexer", "reindex", *args],
                                     env=esindexer_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def wait_line(self, text: str, timeout: float) -> str:
        """The first line of standard output containing ``text``; fails after ``timeout`` s
        or when the process ended without printing it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.out):
                if text in line:
                    return line
            if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                break
            time.sleep(0.1)
        raise AssertionError(f"no line with {text!r}; stdout:\n{''.join(self.out)}\nstderr:\n"
                             f"{''.join(self.err)[-4000:]}")

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """Exit code, standard output and standard error, once it ended (killed after ``timeout``)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for reader in self._readers:
            reader.join(10)
        return self.proc.returncode, "".join(self.out), "".join(self.err)


@dataclass
class Sample:
    at: float  #: seconds since the poller started
    total: int  #: documents a search through the alias finds
    distinct: int  #: distinct object ids among them
    indices: list[str]  #: the indices the hits came from


class AliasPoller:
    """Searches the alias every ``interval`` s from a thread and keeps what each search saw."""

    def __init__(self, es_url: str, alias: str, interval: float = 0.5) -> None:
        from elasticsearch import Elasticsearch

        self.es = Elasticsearch(es_url, request_timeout=30)
        self.alias = alias
        self.interval = interval
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alias-poller", daemon=True)

    def start(self) -> AliasPoller:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                # One search: its total, its distinct ids and its indices are from the same moment.
                answer = self.es.search(index=self.alias, size=0, track_total_hits=True, aggs={
                    "ids": {"cardinality": {"field": "zoid", "precision_threshold": 40000}},
                    "indices": {"terms": {"field": "_index", "size": 10}}})
                self.samples.append(Sample(
                    at=round(began - self._started, 2), total=int(answer["hits"]["total"]["value"]),
                    distinct=int(answer["aggregations"]["ids"]["value"]),
                    indices=sorted(b["key"] for b in answer["aggregations"]["indices"]["buckets"])))
            except Exception as exc:  # a failed search is a finding too
                self.errors.append(f"{time.monotonic() - self._started:.2f}s: {exc}")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(30)
        self.es.close()
        return self.samples
