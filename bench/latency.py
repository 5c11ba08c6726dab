"""Benchmark commit-to-searchable latency of the running service.

Usage (servers from ``eval "$(scripts/services env)"``)::

    .venv/bin/python bench/latency.py [--rates 5,20,100] [--seconds 60] [--policies live,off]
                                      [--refresh-intervals default]

Each (refresh interval, policy, rate) runs for ``--seconds``, side by side in one run:
``live`` is the default refresh policy (``ESINDEXER_LIVE_REFRESH_INTERVAL`` 0.1 s: the
touched indices are refreshed explicitly while caught up), ``off`` sets it to 0 (the
behaviour before the policy: only the index's own refresh publishes writes). After each
run it reports Elasticsearch's CPU seconds during the run and the index's segment count.

It creates a scratch history-free database on ESIT_PG_DSN and, for each
refresh interval, runs an :class:`esindexer.pipeline.indexer.Indexer` in a thread (as
tests/pipeline/test_indexer.py's ``running()`` does) with the default settings (replicas 0),
into a fresh index prefix with its own client id. Once the service is idle it commits
``--commits`` small objects through ZODB, one per transaction, one every
``--spacing`` seconds, each into an OOBTree container (so every commit also writes a
bucket, which the indexer turns into deletes, as real folder commits do).

A poller thread watches every object not yet seen, every ~5 ms:

- **indexed**: a multi-GET of its id succeeds. GETs are real-time (they read the
  translog), so this is the moment Elasticsearch has the document, before any refresh;
- **searchable**: a ``terms`` search on ``zoid`` through the alias finds it. Searches
  see only what a *refresh* has published: at most ``index.refresh_interval`` after
  the write (1 s by default), so this is what a user of the index experiences.

Times are measured from ``transaction.commit()`` returning (and, in brackets, from its
start). ``default`` leaves the index as esindexer creates it (no refresh_interval:
Elasticsearch's 1 s); other values are applied to the index with the update-settings
API while the service runs. The poller's own searches keep the shard out of the
*search-idle* state (no refresh after 30 s without searches), which an index nobody
searches would enter; see docs/performance.md. Indices, template and database are
removed at the end. Nothing is asserted: the figures go into docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import statistics
import sys
import threading
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import persistent  # noqa: E402

from esindexer.config import Settings, load_settings  # noqa: E402
from esindexer.errors import ExitCode  # noqa: E402
from esindexer.observe.metrics import Metrics  # noqa: E402
from esindexer.pipeline.indexer import Indexer  # noqa: E402
from esindexer.source import follow, progress  # noqa: E402
from tests.support import fresh_database, open_zodb, search_client, search_engine, servers_from_env, wait_for  # noqa: E402


class Note(persistent.Persistent):
    """A small content object: one per commit."""


class Watcher:
    """Polls Elasticsearch for objects committed but not yet seen, recording when each shows up.

    One thread does both checks in turn so that the two figures of one object are
    taken by the same clock with the same polling delay (~5 ms plus request time).
    """

    def __init__(self, es: Any, settings: Settings, interval: float = 0.005):
        self.es = es
        self.index = settings.index_for_route(settings.default_route)
        self.alias = settings.index_prefix
        self.interval = interval
        self.lock = threading.Lock()
        self.committed: dict[int, tuple[float, float]] = {}  # zoid -> (commit start, commit return)
        self.indexed: dict[int, float] = {}
        self.searchable: dict[int, float] = {}
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-watcher")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def add(self, zoid: int, started: float, returned: float) -> None:
        with self.lock:
            self.committed[zoid] = (started, returned)

    def done(self) -> bool:
        with self.lock:
            return len(self.searchable) == len(self.committed) and len(self.indexed) == len(self.committed)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                not_indexed = [z for z in self.committed if z not in self.indexed]
                not_searchable = [z for z in self.committed if z not in self.searchable]
            if not_indexed:
                found = self.es.mget(index=self.index, ids=[str(z) for z in not_indexed],
                                     source=False, filter_path="docs._id,docs.found")["docs"]
                now = time.perf_counter()
                with self.lock:
                    for doc in found:
                        if doc.get("found"):
                            self.indexed.setdefault(int(doc["_id"]), now)
            if not_searchable:
                hits = self.es.search(index=self.alias, query={"terms": {"zoid": not_searchable}},
                                      size=len(not_searchable), source=False,
                                      filter_path="hits.hits._id").get("hits", {}).get("hits", [])
                now = time.perf_counter()
                with self.lock:
                    for hit in hits:
                        self.searchable.setdefault(int(hit["_id"]), now)
            self.polls += 1
            self._stop.wait(self.interval)


def caught_up(db_dsn: str, client_id: str) -> bool:
    """Whether the service's saved progress reached the newest tid (False before it made its table)."""
    import psycopg2

    try:
        return progress.get_progress_tid(db_dsn, client_id) >= follow.latest_tid(db_dsn)
    except psycopg2.Error:
        return False


def summary(values: list[float]) -> str:
    """p50 / p90 / max in milliseconds (nearest rank, as bench/follow.py)."""
    ms = sorted(1000 * v for v in values)
    if not ms:
        return "no samples"
    return (f"p50 {statistics.median(ms):.0f} ms, p90 {ms[int(0.9 * (len(ms) - 1))]:.0f} ms, "
            f"max {ms[-1]:.0f} ms")


def es_cpu_seconds(es: Any) -> float:
    """CPU seconds of the local Elasticsearch process (user + system), from /proc."""
    info = es.nodes.info(node_id="_local", metric="process")["nodes"]
    pid = next(iter(info.values()))["process"]["id"]
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(db: Any, db_dsn: str, es: Any, es_url: str, prefix: str, refresh: str, commits: int,
            spacing: float, policy: str = "live") -> dict[str, Any]:
    """Run the service into ``prefix`` with ``refresh`` and the refresh ``policy``; commit
    and watch ``commits`` objects, one every ``spacing`` seconds."""
    import transaction
    from BTrees.OOBTree import OOBTree

    settings = load_settings(env={
        "ESINDEXER_PG_DSN": db_dsn,
        "ESINDEXER_ES_URL": es_url,
        "ESINDEXER_SEARCH_ENGINE": search_engine(),  # ESIT_SEARCH_ENGINE=opensearch: OpenSearch
        "ESINDEXER_INDEX_PREFIX": prefix,
        "ESINDEXER_CLIENT_ID": prefix,
        "ESINDEXER_INDEX_REPLICAS": "0",
        "ESINDEXER_METRICS_PORT": "0",
        "ESINDEXER_LIVE_REFRESH_INTERVAL": "0.1" if policy == "live" else "0",
    })
    tm = transaction.TransactionManager(explicit=True)
    conn = db.open(tm)
    tm.begin()
    root = conn.root()
    container = root.setdefault("notes", OOBTree())
    tm.commit()

    metrics = Metrics(process_metrics=False)
    indexer = Indexer(settings, metrics)
    outcome: dict[str, int] = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("code", indexer.run()), daemon=True,
                              name="esindexer-reader")
    thread.start()
    watcher = Watcher(es, settings)
    index = settings.index_for_route(settings.default_route)
    try:
        # Idle and caught up: the index exists and progress reached the newest tid.
        wait_for(lambda: es.indices.exists(index=index), message="index created")
        if refresh != "default":
            es.indices.put_settings(index=index, settings={"index": {"refresh_interval": refresh}})
        wait_for(lambda: caught_up(db_dsn, settings.client_id), timeout=120, message="service caught up")
        time.sleep(1.0)
        cpu_start = es_cpu_seconds(es)
        refreshes_start = metrics.refreshes._value.get()
        watch_start = time.perf_counter()
        watcher.start()
        commit_times: list[float] = []
        for i in range(commits):
            began = time.perf_counter()
            tm.begin()
            note = Note()
            note.title = f"note {i}"
            note.n = i
            note.created = datetime.datetime.now()
            container[f"{uuid.uuid4().hex}"] = note
            started = time.perf_counter()
            tm.commit()
            returned = time.perf_counter()
            commit_times.append(returned - started)
            watcher.add(int.from_bytes(note._p_oid, "big"), started, returned)
            time.sleep(max(0.0, began + spacing - time.perf_counter()))
        wait_for(watcher.done, timeout=60, message="every note searchable")
        watched = time.perf_counter() - watch_start
        es_cpu = es_cpu_seconds(es) - cpu_start
        refreshes = metrics.refreshes._value.get() - refreshes_start
        segments = sum(len(shard["segments"]) for shards in es.indices.segments(index=index)["indices"][index]
                       ["shards"].values() for shard in shards)
    finally:
        watcher.stop()
        indexer.stop()
        thread.join(60)
        conn.close()
    if outcome.get("code") != ExitCode.OK:
        print(f"WARNING: indexer exited with {outcome.get('code')}")
    ids = list(watcher.committed)
    start = {z: watcher.committed[z][0] for z in ids}
    ret = {z: watcher.committed[z][1] for z in ids}
    return dict(
        refresh=refresh,
        policy=policy,
        rate=1 / spacing,
        es_cpu=es_cpu,
        refreshes=refreshes,
        segments=segments,
        seconds=watched,
        commit=commit_times,
        indexed=[watcher.indexed[z] - ret[z] for z in ids],
        searchable=[watcher.searchable[z] - ret[z] for z in ids],
        indexed_from_start=[watcher.indexed[z] - start[z] for z in ids],
        searchable_from_start=[watcher.searchable[z] - start[z] for z in ids],
        after_indexed=[watcher.searchable[z] - watcher.indexed[z] for z in ids],
        polls=watcher.polls,
        poll_period=watched / max(watcher.polls, 1),
        settings=settings,
    )


def cells(values: list[float]) -> str:
    """p50 / p90 / p99 / max in milliseconds (nearest rank)."""
    ms = sorted(1000 * v for v in values)
    pick = lambda q: ms[min(len(ms) - 1, int(q * (len(ms) - 1) + 0.5))]  # noqa: E731
    return f"{statistics.median(ms):.0f} / {pick(0.9):.0f} / {pick(0.99):.0f} / {ms[-1]:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="5,20,100", help="commits per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each run")
    parser.add_argument("--policies", default="live,off", help="live (the default policy) and/or off")
    parser.add_argument("--refresh-intervals", default="default",
                        help="comma-separated index.refresh_interval values; 'default' = as created (1s)")
    args = parser.parse_args(argv)
    pg, es_url = servers_from_env()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    es = search_client(es_url, request_timeout=60)
    root = f"bench-{uuid.uuid4().hex[:6]}"
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; index prefix {root}-*")
    results = []
    runs = [(refresh.strip(), policy.strip(), float(rate))
            for refresh in args.refresh_intervals.split(",") if refresh.strip()
            for rate in args.rates.split(",") if rate.strip()
            for policy in args.policies.split(",") if policy.strip()]
    with fresh_database(pg, prefix="esbench") as db_dsn:
        db = open_zodb(db_dsn, keep_history=False)
        try:
            for n, (refresh, policy, rate) in enumerate(runs):
                prefix = f"{root}-{n}"
                commits = max(1, int(rate * args.seconds))
                try:
                    r = measure(db, db_dsn, es, es_url, prefix, refresh, commits, 1 / rate, policy)
                finally:
                    es.options(ignore_status=404).indices.delete(index=f"{prefix}-*", expand_wildcards="all",
                                                                 allow_no_indices=True)
                    es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-esindexer")
                results.append(r)
                label = "1s (default)" if refresh == "default" else refresh
                print(f"refresh {label}, policy {policy}, {rate:g} commits/s: {len(r['indexed'])} commits in "
                      f"{r['seconds']:.0f} s, {r['polls']} polls (one every {1000 * r['poll_period']:.0f} ms: "
                      f"the resolution); load {os.getloadavg()[0]:.2f}")
                print(f"  commit -> indexed (GET finds it), p50/p90/p99/max ms:    {cells(r['indexed'])}")
                print(f"  commit -> searchable (search hits), p50/p90/p99/max ms: {cells(r['searchable'])}")
                print(f"  explicit refreshes {r['refreshes']:.0f}, Elasticsearch CPU {r['es_cpu']:.1f} s, "
                      f"segments at the end {r['segments']}", flush=True)
        finally:
            db.close()
    print()
    print("| refresh_interval | policy | commits/s | commit -> searchable p50 / p90 / p99 / max (ms) "
          "| commit -> indexed p50 / p90 / p99 / max (ms) | explicit refreshes | ES CPU (s) | segments |")
    print("|---|---|---:|---|---|---:|---:|---:|")
    for r in results:
        label = "1s (default)" if r["refresh"] == "default" else r["refresh"]
        print(f"| {label} | {r['policy']} | {r['rate']:g} | {cells(r['searchable'])} | {cells(r['indexed'])} "
              f"| {r['refreshes']:.0f} | {r['es_cpu']:.1f} | {r['segments']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
