"""Measured limits: backfill against the raw bulk limit, commit to searchable, memory, source-side cost.

Usage (servers from ``eval "$(scripts/services env)"``)::

    .venv/bin/python bench/limits.py [--objects 100000] [--big-objects 1000000] [--rounds 2]
                                     [--partitions 2] [--latency-seconds 60] [--latency-rate 20]
                                     [--commits 1500] [--only backfill,latency,memory,source] [--profile]

Each part prints its figures beside its target and the ratio, in one run:

1. **backfill vs the raw limit** (``--objects``, bench/backfill.py's corpus): documents/s of
   ``python -m esindexer run --until-caught-up`` (a fresh process, start included), of the
   same ``Indexer`` run in this process (no start), and of N partition processes side by
   side (``--partitions``), against the *raw* rate: the same documents, converted and
   serialised beforehand, sent by ``elasticsearch.helpers.parallel_bulk`` into an index
   made from esindexer's template (the same mapping), at the best of a few thread/chunk
   settings. Rounds are interleaved and the best of each kind is kept. Where the gap goes:
   the per-document CPU of each stage alone (bench/backfill.py's stage timer) and, with
   ``--profile``, the reader thread's top functions under cProfile.
2. **commit to searchable** at ``--latency-rate`` commits/s for ``--latency-seconds``, default
   1 s refresh interval and default settings (bench/latency.py's measurement): p50, p95,
   p99, max.
3. **memory**: peak RSS (VmHWM) of the ``run --until-caught-up`` process at ``--objects`` and at
   ``--big-objects``, and its largest RSS during the first quarter of the big run (when it
   is nearly all of the backlog behind).
4. **source-side cost**: ZODB commits/s of a writer (one new and one changed object per
   transaction, ``--commits`` of them) with esindexer's triggers installed and without,
   interleaved, best of ``--rounds``.

Scratch databases on ESIT_PG_DSN and indices under a random prefix are removed at the
end. Nothing is asserted: the figures go into docs/performance.md ("Measured limits").
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import backfill as corpus  # noqa: E402  (bench/backfill.py: the corpus and the stage timer)

from esindexer.config import load_settings  # noqa: E402
from esindexer.convert.configure import build_jsonifier  # noqa: E402
from esindexer.documents import DocumentBuilder  # noqa: E402
from esindexer.observe.metrics import Metrics  # noqa: E402
from esindexer.pipeline.indexer import Indexer  # noqa: E402
from esindexer.source import deletions, follow, notify  # noqa: E402
from tests.support import fresh_database, open_zodb, servers_from_env  # noqa: E402

ROOT = os.path.dirname(HERE)


def settings_env(db_dsn: str, es_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_INDEX_PREFIX": prefix,
            "ESINDEXER_CLIENT_ID": prefix, "ESINDEXER_INDEX_REPLICAS": "0", "ESINDEXER_METRICS_PORT": "0",
            **{f"ESINDEXER_{k.upper()}": v for k, v in extra.items()}}


def drop(es: Any, prefix: str) -> None:
    es.options(ignore_status=404).indices.delete(index=f"{prefix}-*", expand_wildcards="all", allow_no_indices=True)
    es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-esindexer")


def count(es: Any, prefix: str) -> int:
    es.indices.refresh(index=f"{prefix}-*")
    return int(es.count(index=f"{prefix}-*")["count"])


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


# -- processes and their memory ------------------------------------------------------------------


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_processes(envs: list[dict[str, str]], sample: float = 0.05) -> tuple[float, list[int], list[tuple]]:
    """Start ``python -m esindexer run --until-caught-up`` once per env, together; wait for all.
    Returns (wall seconds, peak RSS bytes of each, [(t, rss bytes of the first)] samples); the
    processes' CPU seconds are in :func:`children_cpu`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ESINDEXER_")}
    base["PYTHONPATH"] = ROOT
    logs = [tempfile.TemporaryFile() for _ in envs]  # noqa: SIM115 (closed below; a pipe nobody reads would block)
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "esindexer", "run", "--until-caught-up"], env={**base, **env},
                              stdout=subprocess.DEVNULL, stderr=log) for env, log in zip(envs, logs)]
    peaks = [0] * len(procs)
    samples: list[tuple[float, int]] = []
    while any(p.poll() is None for p in procs):
        for i, proc in enumerate(procs):
            status = _status(proc.pid)
            if status:
                peaks[i] = max(peaks[i], status.get("VmHWM", 0))
                if i == 0:
                    samples.append((time.perf_counter() - started, status.get("VmRSS", 0)))
        time.sleep(sample)
    wall = time.perf_counter() - started
    for proc, log in zip(procs, logs):
        log.seek(0)
        err = log.read().decode(errors="replace")
        log.close()
        if proc.returncode != 0:
            raise RuntimeError(f"esindexer exited {proc.returncode}: {err[-3000:]}")
    return wall, peaks, samples


def _status(pid: int) -> dict[str, int]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in fh)
                    if k in ("VmHWM", "VmRSS")}
    except (OSError, ValueError):
        return {}


# -- 1. backfill vs the raw bulk limit -------------------------------------------------------------


def serialized(db_dsn: str, settings: Any) -> list[dict[str, Any]]:
    """Every document esindexer would write, as bulk-helper actions with the body already JSON."""
    jsonifier, builder = build_jsonifier(settings), DocumentBuilder(settings)
    actions = []
    for batch in follow.updates(db_dsn, end_tid=follow.latest_tid(db_dsn)):
        for tid, zoid, data in batch:
            c = jsonifier.convert((tid, zoid), data)
            if c.kind == "ok":
                a = builder.index_action(tid, zoid, c.class_name, c.json_text)
                actions.append({"_op_type": "index", "_index": a.index, "_id": str(zoid), "version": tid,
                                "version_type": "external_gte", "_source": a.source})
    return actions


def raw_rate(es: Any, es_url: str, db_dsn: str, actions: list[dict], prefix: str, threads: int, chunk: int) -> float:
    """Docs/s of parallel_bulk sending ``actions`` (re-pointed at ``prefix``'s index) into an index
    made from esindexer's template."""
    from elasticsearch.helpers import parallel_bulk

    from esindexer.es.admin import ensure_indices
    from esindexer.es.client import make_es_client

    settings = load_settings(env=settings_env(db_dsn, es_url, prefix))
    client = make_es_client(settings)
    ensure_indices(client, settings)
    index = settings.index_for_route(settings.default_route)
    batch = [{**a, "_index": index} for a in actions]
    started = time.perf_counter()
    for ok, item in parallel_bulk(client, batch, thread_count=threads, chunk_size=chunk,
                                  max_chunk_bytes=8 * 1024 * 1024, raise_on_error=False):
        if not ok:
            raise RuntimeError(f"raw bulk item failed: {item}")
    seconds = time.perf_counter() - started
    client.close()
    assert count(es, prefix) == len(actions)
    return len(actions) / seconds


def in_process(db_dsn: str, es_url: str, prefix: str, profile: bool) -> tuple[float, pstats.Stats | None]:
    settings = load_settings(env=settings_env(db_dsn, es_url, prefix))
    indexer = Indexer(settings, Metrics(process_metrics=False))
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    indexer.run(until_caught_up=True)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    return seconds, pstats.Stats(profiler) if profiler else None


def backfill_part(args: argparse.Namespace, es: Any, es_url: str, db_dsn: str, db: Any, root: str) -> dict[str, Any]:
    import latency  # bench/latency.py: Elasticsearch's CPU seconds from /proc
    t = time.perf_counter()
    written = corpus.write_corpus(db, args.objects, 1000)
    print(f"corpus: {written} objects written in {time.perf_counter() - t:.0f} s (not measured); {load()}")
    settings = load_settings(env=settings_env(db_dsn, es_url, f"{root}-probe"))
    actions = serialized(db_dsn, settings)
    docs = len(actions)
    grid = [(2, 1000), (4, 1000), (2, 2000), (4, 500)]
    best: dict[str, float] = {}
    rounds: dict[str, list[float]] = {}
    peaks: list[int] = []
    profile: pstats.Stats | None = None

    cpu: dict[str, tuple[float, float]] = {}  # kind -> (client CPU µs/doc, ES CPU µs/doc) of its best round
    clock: dict[str, float] = {}

    def begin() -> None:
        clock.update(es=latency.es_cpu_seconds(es), me=time.process_time(), kids=children_cpu())

    def note(kind: str, rate: float) -> None:
        es_cpu = latency.es_cpu_seconds(es) - clock["es"]
        client = time.process_time() - clock["me"] + children_cpu() - clock["kids"]
        rounds.setdefault(kind, []).append(rate)
        if rate > best.get(kind, 0.0):
            best[kind] = rate
            cpu[kind] = (1e6 * client / docs, 1e6 * es_cpu / docs)
        print(f"  {kind:<44} {rate:>9,.0f} docs/s   CPU µs/doc: client {1e6 * client / docs:5.0f}, "
              f"Elasticsearch {1e6 * es_cpu / docs:5.0f}   {load()}", flush=True)

    n = 0
    for r in range(args.rounds + 1):  # round 0 warms Elasticsearch up and is not kept
        label = "warm-up" if r == 0 else f"round {r}"
        print(f"{label}:")
        for threads, chunk in grid if r else grid[:1]:
            n += 1
            begin()
            rate = raw_rate(es, es_url, db_dsn, actions, f"{root}-raw{n}", threads, chunk)
            drop(es, f"{root}-raw{n}")
            if r:
                note(f"raw parallel_bulk threads {threads} chunk {chunk}", rate)
        n += 1
        begin()
        wall, peak, _ = run_processes([settings_env(db_dsn, es_url, f"{root}-run{n}")])
        assert count(es, f"{root}-run{n}") == docs
        drop(es, f"{root}-run{n}")
        if not r:
            continue
        peaks += peak
        note("esindexer run --until-caught-up (process)", docs / wall)
        n += 1
        begin()
        seconds, stats = in_process(db_dsn, es_url, f"{root}-inproc{n}", args.profile and r == 1)
        profile = profile or stats
        drop(es, f"{root}-inproc{n}")
        note("Indexer.run in this process (no start-up)", docs / seconds)
        for parts in sorted({1, args.partitions}):
            if parts == 1:
                continue
            n += 1
            envs = [settings_env(db_dsn, es_url, f"{root}-part{n}", partition=f"{i}/{parts}") for i in range(parts)]
            begin()
            wall, _, _ = run_processes(envs)
            assert count(es, f"{root}-part{n}") == docs
            drop(es, f"{root}-part{n}")
            note(f"{parts} partition processes side by side", docs / wall)
    raw = max(v for k, v in best.items() if k.startswith("raw"))
    print(f"\nbackfill of {docs:,} documents ({args.objects:,} objects), best of {args.rounds} round(s):")
    print("| way | docs/s (best) | per round | vs raw | target | CPU µs/doc: client / Elasticsearch |")
    print("|---|---:|---|---:|---|---|")
    for kind, rate in best.items():
        target = "≥ 0.80" if kind.startswith("esindexer run") else ""
        per = " / ".join(f"{v:,.0f}" for v in rounds[kind])
        print(f"| {kind} | {rate:,.0f} | {per} | {rate / raw:.2f} | {target} | {cpu[kind][0]:.0f} / {cpu[kind][1]:.0f} |")
    st = corpus.measure_stages(db_dsn, settings)
    per = lambda s: 1e6 * s / max(docs, 1)  # noqa: E731
    print(f"\nesindexer's side alone, µs per document (one thread, no Elasticsearch): read {per(st.read_s):.1f}, "
          f"convert {per(st.convert_s):.1f}, shape {per(st.build_s):.1f}, bulk body {per(st.body_s):.1f}; "
          f"total {per(st.read_s + st.convert_s + st.build_s + st.body_s):.1f} "
          f"(= {docs / (st.read_s + st.convert_s + st.build_s + st.body_s):,.0f} docs/s); "
          f"raw best costs {1e6 / raw:.1f} µs of wall per document")
    if profile is not None:
        print("\nreader thread under cProfile (one in-process run; cProfile slows it), top 15 by own time:")
        profile.sort_stats("tottime").print_stats(15)
    return {"docs": docs, "peak": max(peaks) if peaks else 0}


# -- 2. commit to searchable ----------------------------------------------------------------------


def latency_part(args: argparse.Namespace, es: Any, es_url: str, db_dsn: str, db: Any, root: str) -> None:
    import latency

    commits = int(args.latency_rate * args.latency_seconds)
    prefix = f"{root}-latency"
    try:
        r = latency.measure(db, db_dsn, es, es_url, prefix, "default", commits, 1 / args.latency_rate, "live")
    finally:
        drop(es, prefix)
    ms = sorted(1000 * v for v in r["searchable"])
    pick = lambda q: ms[min(len(ms) - 1, int(q * (len(ms) - 1) + 0.5))]  # noqa: E731
    p50, p95, p99 = pick(0.5), pick(0.95), pick(0.99)
    print(f"\ncommit -> searchable, {len(ms)} commits at {args.latency_rate:g}/s over {r['seconds']:.0f} s, "
          f"refresh_interval 1s (default), live refresh policy (default); {load()}")
    print("| p50 | p95 | p99 | max | target p50 ≤ 700 ms | target p99 ≤ 1300 ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {p50:.0f} ms | {p95:.0f} ms | {p99:.0f} ms | {ms[-1]:.0f} ms | {p50 / 700:.2f} of target "
          f"| {p99 / 1300:.2f} of target |")
    indexed = sorted(1000 * v for v in r["indexed"])
    print(f"(commit -> indexed, GET finds it: p50 {indexed[len(indexed) // 2]:.0f} ms, max {indexed[-1]:.0f} ms; "
          f"explicit refreshes {r['refreshes']:.0f})")


# -- 3. memory ------------------------------------------------------------------------------------


def memory_part(args: argparse.Namespace, es: Any, es_url: str, pg: str, root: str, small_peak: int | None) -> None:
    mib = lambda b: b / 2**20  # noqa: E731
    results = []
    for objects in ([] if small_peak else [args.objects]) + [args.big_objects]:
        with fresh_database(pg, prefix="esbench") as db_dsn:
            db = open_zodb(db_dsn, keep_history=False)
            try:
                t = time.perf_counter()
                corpus.write_corpus(db, objects, 1000)
                print(f"corpus of {objects:,} objects written in {time.perf_counter() - t:.0f} s; {load()}",
                      flush=True)
            finally:
                db.close()
            prefix = f"{root}-mem{objects}"
            wall, peaks, samples = run_processes([settings_env(db_dsn, es_url, prefix)])
            docs = count(es, prefix)
            drop(es, prefix)
            early = max((rss for t, rss in samples if t <= wall / 4), default=0)
            results.append((objects, docs, wall, peaks[0], early))
    if small_peak:
        results.insert(0, (args.objects, None, None, small_peak, None))
    print(f"\npeak RSS of `esindexer run --until-caught-up`; {load()}")
    print("| objects | documents | s | peak RSS (VmHWM) | largest RSS in the first quarter (~all behind) | target |")
    print("|---:|---:|---:|---:|---:|---|")
    for objects, docs, wall, peak, early in results:
        print(f"| {objects:,} | {docs or '-'} | {f'{wall:.0f}' if wall else '-'} | {mib(peak):.0f} MiB "
              f"| {f'{mib(early):.0f} MiB' if early else '-'} | ≤ 200 MiB |")
    if len(results) >= 2:
        small, big = results[0][3], results[-1][3]
        print(f"big / small peak: {big / small:.2f} (target ≤ 1.15)")


# -- 4. source-side cost ---------------------------------------------------------------------------


def writer_rate(db: Any, commits: int) -> float:
    import transaction
    from BTrees.OOBTree import OOBTree

    tm = transaction.TransactionManager(explicit=True)
    conn = db.open(tm)
    tm.begin()
    container = conn.root().setdefault("bench", OOBTree())
    tm.commit()
    keys = list(container.keys())
    started = time.perf_counter()
    for i in range(commits):
        tm.begin()
        key = uuid.uuid4().hex
        container[key] = corpus.Person()
        container[key].name = f"p{i}"
        if keys:
            container[keys[i % len(keys)]].name = f"changed {i}"
        tm.commit()
        keys.append(key)
    seconds = time.perf_counter() - started
    conn.close()
    return commits / seconds


def triggers(db_dsn: str, on: bool) -> None:
    import psycopg2

    conn = psycopg2.connect(db_dsn)
    try:
        if on:
            notify.install_trigger(conn)
            conn.commit()
            deletions.install(conn)
        else:
            notify.uninstall_trigger(conn)
            conn.commit()
            with conn.cursor() as cur:
                cur.execute(f"DROP TRIGGER IF EXISTS {deletions.CAPTURE_TRIGGER} ON object_state")
            conn.commit()
    finally:
        conn.close()


def source_part(args: argparse.Namespace, pg: str) -> None:
    rates: dict[bool, list[float]] = {False: [], True: []}
    with fresh_database(pg, prefix="esbench") as db_dsn:
        db = open_zodb(db_dsn, keep_history=False)
        try:
            writer_rate(db, 200)  # warm-up: schema, caches, the container
            for _ in range(args.rounds):
                for on in (False, True):
                    triggers(db_dsn, on)
                    rates[on].append(writer_rate(db, args.commits))
                    print(f"  triggers {'on ' if on else 'off'}: {rates[on][-1]:,.0f} commits/s   {load()}", flush=True)
        finally:
            db.close()
    off, on = max(rates[False]), max(rates[True])
    # Each "on" round ran right after an "off" one: their ratios cancel slow drifts of the load.
    pairs = sorted(b / a for a, b in zip(rates[False], rates[True]))
    median = pairs[len(pairs) // 2] if len(pairs) % 2 else (pairs[len(pairs) // 2 - 1] + pairs[len(pairs) // 2]) / 2
    print(f"\nZODB commits/s (one new and one changed object each, {args.commits} commits, best of {args.rounds})")
    print("| without triggers | with esindexer's triggers | slower by (best vs best) | slower by (median of pairs) "
          "| target |")
    print("|---:|---:|---:|---:|---|")
    print(f"| {off:,.0f} ({' / '.join(f'{v:,.0f}' for v in rates[False])}) "
          f"| {on:,.0f} ({' / '.join(f'{v:,.0f}' for v in rates[True])}) | {100 * (1 - on / off):.1f} % "
          f"| {100 * (1 - median):.1f} % | ≤ 5 % |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--big-objects", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--latency-seconds", type=float, default=60.0)
    parser.add_argument("--latency-rate", type=float, default=20.0)
    parser.add_argument("--commits", type=int, default=1500)
    parser.add_argument("--only", default="backfill,latency,memory,source")
    parser.add_argument("--profile", action="store_true", help="cProfile the reader thread in one in-process run")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    pg, es_url = servers_from_env()
    from elasticsearch import Elasticsearch

    es = Elasticsearch(es_url, request_timeout=120)
    root = f"bench-limits-{uuid.uuid4().hex[:6]}"
    print(f"machine: {os.cpu_count()} CPUs; {load()} at start; `uptime`: "
          f"{subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    small_peak = None
    try:
        if parts & {"backfill", "latency"}:
            with fresh_database(pg, prefix="esbench") as db_dsn:
                db = open_zodb(db_dsn, keep_history=False)
                try:
                    if "backfill" in parts:
                        small_peak = backfill_part(args, es, es_url, db_dsn, db, root)["peak"]
                    if "latency" in parts:
                        latency_part(args, es, es_url, db_dsn, db, root)
                finally:
                    db.close()
        if "memory" in parts:
            memory_part(args, es, es_url, pg, root, small_peak)
        if "source" in parts:
            source_part(args, pg)
    finally:
        drop(es, root)
        es.close()
    print(f"\n`uptime` at the end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
