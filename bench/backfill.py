"""Benchmark the whole indexer on a backfill: docs/s and MB/s, variants side by side.

Usage (servers from ``eval "$(scripts/services env)"``)::

    .venv/bin/python bench/backfill.py [--objects 200000] [--per-txn 1000] [--rounds 2]
                                       [--variants baseline,dynamic,...] [--no-warm-up] [--keep]

It creates a scratch history-free database on ESIT_PG_DSN and writes a
corpus with real ZODB + RelStorage: content objects with ~10 attributes (strings,
ints, a float, a bool, datetimes, lists, a dict, references), PersistentMappings,
people, folders whose children live in an OOBTree (the tree and its buckets are
records the indexer skips), committed ``--per-txn`` objects at a time. Writing the
corpus is not what is measured; its time is printed only so a slow run can be told
apart from a slow machine.

Then, on the same corpus:

1. **stages**, single-threaded and without Elasticsearch, in Python CPU µs per document
   (best of 2): reading every row with ``follow.updates``; the service's path, decoding
   (``Jsonifier.decode``) and shaping each document straight from the unpickled state
   (``DocumentBuilder.index_action_from_state``); the JSON text path beside it
   (``Jsonifier.convert`` then ``DocumentBuilder.index_action``, what every record took
   before issue 25 and what ``verify --deep`` and the library API still give);
   ``DocumentBuilder.record`` end to end; and the bulk bodies. This is the CPU the service
   spends besides Elasticsearch, and bounds what any bulk setting can reach in one Python
   process;
2. **variants**: ``Indexer(settings, Metrics()).run(until_caught_up=True)`` once per
   variant, each into a fresh index prefix with its own ``ESINDEXER_CLIENT_ID`` (so
   each starts from no progress). A first baseline run (the defaults of
   esindexer.config) warms Elasticsearch up and is discarded: in a cold node it was
   35 % slower. The list of variants then runs ``--rounds`` times, interleaved, and
   the summary keeps each variant's fastest round (the least disturbed by other work
   on the machine), flagging variants whose rounds differ by more than 15 %.
   Two variants are not the indexer in this process: ``raw`` sends the very same
   documents, serialised beforehand, with ``elasticsearch.helpers.parallel_bulk`` (2
   threads, 1,000 per request, into an index made from esindexer's template): the
   baseline each variant's **ratio** is computed against, in the same run, interleaved;
   and ``process`` runs ``python -m esindexer run --until-caught-up`` (process start
   included; CPU from the child's rusage, its peak RSS from ``VmHWM``), from bytecode
   compiled beforehand as an installed service's is; ``process-objects`` does the same
   with the object model. ``raw-objects`` sends the object model's documents (built
   beforehand by the service's own code, untimed) the way ``raw`` sends the records':
   the baseline of the object-model variants' ratios. ``process-before`` and
   ``process-objects-before`` run the checkout given with ``--before``, started in that
   directory (``python -m`` puts the working directory first on ``sys.path``). A
   variant's object graph is dropped after it (unless ``--keep``), so no round resolves
   beside an earlier round's rows.

For each variant it prints wall time, docs/s, MB/s of object state and of documents,
bulk requests and seconds spent in them (from the metrics registry), CPU seconds of
this process, of Elasticsearch (node stats) and of the whole machine (/proc/stat),
and the throughput over the first and the last quarter of the documents (does it
degrade as the index grows?). Index replicas are 0 (single node). The indices and
template of each variant are deleted after it, and the database at the end, unless
``--keep``. Nothing is asserted: the figures go into docs/performance.md.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import gc
import os
import random
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson  # noqa: E402
import persistent  # noqa: E402

from esindexer.config import Settings, load_settings  # noqa: E402
from esindexer.convert.configure import build_jsonifier  # noqa: E402
from esindexer.convert.jsonifier import Decoded  # noqa: E402
from esindexer.documents import DocumentBuilder  # noqa: E402
from esindexer.es.bulk import bulk_body  # noqa: E402
from esindexer.observe.metrics import Metrics  # noqa: E402
from esindexer.pipeline.indexer import Indexer  # noqa: E402
from esindexer.source import follow  # noqa: E402
from tests.support import fresh_database, open_zodb, search_client, search_engine, servers_from_env  # noqa: E402


class Document(persistent.Persistent):
    """The content class: ~10 attributes of the kinds applications store."""


class Folder(persistent.Persistent):
    """A container whose children are in an OOBTree, as large folders keep them."""


class Person(persistent.Persistent):
    """Referenced by documents (author)."""


WORDS = ["alpha", "beta", "gamma", "delta", "report", "budget", "meeting", "review", "draft", "final", "customer", "order", "invoice", "shipping", "status", "priority", "team", "project", "release", "notes", "summary", "quarterly", "north", "south", "east", "west", "contract", "renewal", "policy", "update"]

#: Variant name -> settings that differ from the defaults of esindexer.config.
VARIANTS: dict[str, dict[str, str]] = {
    "baseline": {},  # the defaults: the typed document model
    # one document per application object, parts folded in (issue 22), side by side with records
    "objects": {"ESINDEXER_DOCUMENTS": "objects"},
    # the former default, side by side with the typed model in one run (docs/performance.md)
    "flattened": {"ESINDEXER_STATE_MAPPING": "flattened"},
    # dead letters unlimited, so a regression shows as a count instead of a stop
    "dynamic": {"ESINDEXER_STATE_MAPPING": "dynamic", "ESINDEXER_DEAD_LETTER_BUDGET": "0"},
    # refreshes every 30 s instead of every second: what a backfill gains from fewer segments
    "refresh-30s": {"ESINDEXER_INDEX_REFRESH_INTERVAL": "30s"},
    "concurrency-1": {"ESINDEXER_BULK_CONCURRENCY": "1"},
    "concurrency-4": {"ESINDEXER_BULK_CONCURRENCY": "4"},
    "max-docs-500": {"ESINDEXER_BULK_MAX_DOCS": "500"},
    "max-docs-2000": {"ESINDEXER_BULK_MAX_DOCS": "2000"},
    "max-docs-5000": {"ESINDEXER_BULK_MAX_DOCS": "5000"},
    # Not a setting: the index is created beforehand with the flattened field's
    # ignore_above at its former 8191 instead of 256 (see precreate_index).
    "flattened-ignore-above-8191": {"_IGNORE_ABOVE": "8191"},
    # Not the indexer in this process: the raw bulk baseline, and the service as a process.
    "raw": {"_WAY": "raw"},
    # the raw bulk of the object model's documents (built as the service builds them): the
    # baseline of the variants with documents=objects
    "raw-objects": {"_WAY": "raw", "ESINDEXER_DOCUMENTS": "objects"},
    "process": {"_WAY": "process"},
    # the same with no unmapped-fields check (a search every 60 s): does a search that wakes
    # a search-idle shard (scheduled refreshes again) cost a long backfill?
    "process-no-watch": {"_WAY": "process", "ESINDEXER_UNMAPPED_CHECK_INTERVAL": "0"},
    # the same process from another checkout of the code (--before PATH): before/after in one run
    "process-before": {"_WAY": "process", "_BEFORE": "1"},
    # the object model as the service runs it (process start included), beside ``process``
    "process-objects": {"_WAY": "process", "ESINDEXER_DOCUMENTS": "objects"},
    # the object model from another checkout of the code (--before PATH), beside process-objects
    "process-objects-before": {"_WAY": "process", "_BEFORE": "1", "ESINDEXER_DOCUMENTS": "objects"},
}
#: The checkout ``process-before`` and ``process-objects-before`` run (``--before``).
BEFORE: list[str] = []
DEFAULT_ORDER = ("baseline,flattened,dynamic,refresh-30s,concurrency-1,concurrency-4,max-docs-500,max-docs-2000,"
                 "max-docs-5000")


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


@contextmanager
def corpus_database(pg: str, objects: int, per_txn: int = 1000) -> Iterator[str]:
    """The DSN of a scratch history-free database holding the corpus (dropped afterwards):
    for the benchmarks that measure something else than writing it."""
    with fresh_database(pg, prefix="esbench") as dsn:
        db = open_zodb(dsn, keep_history=False)
        try:
            write_corpus(db, objects, per_txn)
        finally:
            db.close()
        yield dsn


def write_corpus(db: Any, objects: int, per_txn: int, seed: int = 7) -> int:
    """Write about ``objects`` non-BTree objects, ``per_txn`` per transaction; return how many.

    One transaction holds one folder, its OOBTree of children, the children
    (documents; one in five with a PersistentMapping of annotations) and a few new
    people, so references cross objects of the same and of earlier transactions the
    way a content tree's do. An explicit transaction manager and no cache limit
    pressure keep the writing fast; it is not what the benchmark measures.
    """
    import transaction
    from BTrees.OOBTree import OOBTree
    from persistent.mapping import PersistentMapping

    rng = random.Random(seed)
    tm = transaction.TransactionManager(explicit=True)
    conn = db.open(tm)
    tm.begin()
    root = conn.root()
    root["folders"] = folders = OOBTree()
    people: list[Person] = []
    made = 0
    start = datetime.datetime(2020, 1, 1)
    while made < objects:
        budget = min(per_txn, objects - made)
        folder = Folder()
        folder.title = sentence(rng, 3)
        folder.created = start + datetime.timedelta(minutes=rng.randint(0, 2_000_000))
        folder.items = OOBTree()
        folder.settings = PersistentMapping({"sort_on": "modified", "public": rng.random() < 0.5,
                                             "page_size": 25, "layout": "listing"})
        folder.id = f"f{len(folders):06d}"  # held under their ids: objects of a tree (documents=objects)
        folders[folder.id] = folder
        count = 2
        for _ in range(max(1, budget // 100)):  # ~1 % people
            p = Person()
            p.name = f"{rng.choice(WORDS).title()} {rng.choice(WORDS).title()}"
            p.email = f"user{len(people)}@example.org"
            p.joined = start + datetime.timedelta(days=rng.randint(0, 1500))
            people.append(p)
            count += 1
        while count < budget:
            d = Document()
            d.title = sentence(rng, 6)
            d.description = sentence(rng, 20)
            d.body = " ".join(sentence(rng, 12) for _ in range(rng.randint(1, 5)))
            d.created = start + datetime.timedelta(minutes=rng.randint(0, 2_000_000))
            d.modified = d.created + datetime.timedelta(hours=rng.randint(0, 5000))
            d.author = rng.choice(people)
            d.parent = folder
            d.tags = rng.sample(WORDS, rng.randint(0, 5))
            d.views = rng.randint(0, 100_000)
            d.rating = round(rng.random() * 5, 2)
            d.published = rng.random() < 0.8
            d.meta = {"lang": rng.choice(("en", "de", "fr")), "words": rng.randint(10, 2000)}
            count += 1
            if rng.random() < 0.2 and count < budget:
                d.annotations = PersistentMapping({
                    "workflow": {"state": rng.choice(("draft", "review", "published")),
                                 "history": [rng.choice(WORDS) for _ in range(3)]},
                    "locked_by": rng.choice(people) if rng.random() < 0.1 else None,
                })
                count += 1
            d.id = f"doc-{len(folder.items):05d}"
            folder.items[d.id] = d
        made += count
        tm.commit()
        tm.begin()
    tm.abort()
    conn.close()
    return made


@dataclass
class Stages:
    """What the single-threaded stage pass found and how long each stage took."""

    rows: int = 0
    state_bytes: int = 0
    doc_bytes: int = 0
    body_bytes: int = 0
    kinds: collections.Counter = field(default_factory=collections.Counter)
    classes: collections.Counter = field(default_factory=collections.Counter)
    read_s: float = 0.0
    convert_s: float = 0.0
    build_s: float = 0.0
    build_flat_s: float = 0.0
    doc_bytes_flat: int = 0
    body_s: float = 0.0
    decode_s: float = 0.0
    direct_s: float = 0.0
    record_s: float = 0.0
    direct: int = 0  #: documents the direct path built (the rest fell back to the text)
    #: every document as the raw baseline sends it (bulk-helper actions, source pre-serialised)
    raw: list = field(default_factory=list)


def measure_stages(dsn: str, settings: Settings, repeat: int = 2) -> Stages:
    """Time each reader/sender stage on its own (best of ``repeat``), without Elasticsearch.

    The stages keep every row in memory to be timed apart; the cyclic garbage collector
    is paused meanwhile, because with hundreds of thousands of live objects its passes
    would be charged to whichever stage happens to trigger them (the service streams
    and holds one bulk at a time, so it does not pay that).
    """
    gc.collect()
    gc.disable()
    try:
        return _measure_stages(dsn, settings, repeat)
    finally:
        gc.enable()


def _measure_stages(dsn: str, settings: Settings, repeat: int) -> Stages:
    st = Stages()
    rows: list[tuple[int, int, bytes]] = []
    best = float("inf")
    for _ in range(repeat):
        rows = []
        end = follow.latest_tid(dsn)
        t = time.process_time()
        for batch in follow.updates(dsn, end_tid=end, batch_limit=settings.batch_limit,
                                    internal_batch_size=settings.fetch_size):
            rows.extend(batch)
        best = min(best, time.process_time() - t)
    st.read_s = best
    st.rows = len(rows)
    st.state_bytes = sum(len(d) for _, _, d in rows if d)

    jsonifier = build_jsonifier(settings)
    builder = DocumentBuilder(settings)
    conversions: list = []
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        conversions = [jsonifier.convert((tid, zoid), data) for tid, zoid, data in rows]
        best = min(best, time.process_time() - t)
    st.convert_s = best
    for c in conversions:
        st.kinds[c.kind] += 1
        st.classes[(c.class_name or "?").rsplit(".", 1)[-1]] += 1
    ok = [(tid, zoid, c) for (tid, zoid, _), c in zip(rows, conversions) if c.kind == "ok"]
    actions: list = []
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        actions = [builder.index_action(tid, zoid, c.class_name, c.json_text) for tid, zoid, c in ok]
        best = min(best, time.process_time() - t)
    st.build_s = best
    st.doc_bytes = sum(len(a.source) for a in actions)
    flat_builder = DocumentBuilder(dataclasses.replace(settings, state_mapping="flattened"))
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        flat = [flat_builder.index_action(tid, zoid, c.class_name, c.json_text) for tid, zoid, c in ok]
        best = min(best, time.process_time() - t)
    st.build_flat_s = best
    st.doc_bytes_flat = sum(len(a.source) for a in flat)
    del flat, conversions
    decoded: list = []
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        decoded = [jsonifier.decode((tid, zoid), data) for tid, zoid, data in rows]
        best = min(best, time.process_time() - t)
    st.decode_s = best
    states = [(tid, zoid, d) for (tid, zoid, _), d in zip(rows, decoded) if type(d) is Decoded]
    del decoded
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        built = [builder.index_action_from_state(tid, zoid, d.class_name, d.state) for tid, zoid, d in states]
        best = min(best, time.process_time() - t)
    st.direct_s = best
    st.direct = sum(a is not None for a in built)
    del built, states
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        records = [builder.record(jsonifier, tid, zoid, data) for tid, zoid, data in rows]
        best = min(best, time.process_time() - t)
    st.record_s = best
    serviced = [a for _, a in records if a is not None]
    del records
    # the same documents either way (as parsed JSON): what the service writes is what the text gives
    assert len(serviced) == len(actions)
    assert all(orjson.loads(a.source) == orjson.loads(b.source) for a, b in zip(serviced, actions))
    del serviced
    best = float("inf")
    size = settings.bulk_max_docs
    for _ in range(repeat):
        t = time.process_time()
        total = 0
        for i in range(0, len(actions), size):  # what each sender does before the HTTP call
            total += len(bulk_body(actions[i:i + size]))
        best = min(best, time.process_time() - t)
    st.body_s = best
    st.body_bytes = total
    st.raw = [{"_op_type": "index", "_index": a.index, "_id": str(a.zoid), "version": a.version,
               "version_type": "external_gte", "_source": a.source} for a in actions]
    return st


def documents_only(dsn: str, settings: Settings) -> Stages:
    """What the stage pass finds (rows, kinds, bytes, the raw baseline's documents), streamed and
    untimed: for corpora too large to hold every stage's output at once (``--no-stages``)."""
    st = Stages()
    jsonifier, builder = build_jsonifier(settings), DocumentBuilder(settings)
    for batch in follow.updates(dsn, end_tid=follow.latest_tid(dsn), batch_limit=settings.batch_limit,
                                internal_batch_size=settings.fetch_size):
        for tid, zoid, data in batch:
            st.rows += 1
            st.state_bytes += len(data) if data else 0
            conversion, a = builder.record(jsonifier, tid, zoid, data)
            st.kinds[conversion.kind] += 1
            st.classes[(conversion.class_name or "?").rsplit(".", 1)[-1]] += 1
            if a is not None and a.source is not None:
                st.doc_bytes += len(a.source)
                st.raw.append({"_op_type": "index", "_index": a.index, "_id": str(a.zoid), "version": a.version,
                               "version_type": "external_gte", "_source": a.source})
    return st


def object_documents(dsn: str, settings: Settings) -> list[dict[str, Any]]:
    """The corpus's object documents as the service writes them, as the raw baseline sends
    them: the graph built and resolved under a scratch client id (then dropped), each
    object assembled and shaped by the service's own code. Untimed."""
    import psycopg2

    from esindexer.convert.jsonifier import Kind
    from esindexer.objects.assemble import build, read_groups
    from esindexer.objects.edges import RecordFacts, record_edges, record_name
    from esindexer.objects.store import GraphStore
    from esindexer.pipeline.objectreader import object_class_filter
    from esindexer.source import graph, pg

    client = f"bench-raw-objects-{uuid.uuid4().hex[:6]}"
    jsonifier, builder = build_jsonifier(settings), DocumentBuilder(settings)
    conn, states_conn = psycopg2.connect(dsn), psycopg2.connect(dsn)
    graph.ensure_tables(conn)
    conn.commit()
    store = GraphStore(conn, client, object_class_filter(settings))
    try:
        last = -1
        for batch in follow.updates(dsn, end_tid=follow.latest_tid(dsn), batch_limit=settings.batch_limit,
                                    internal_batch_size=settings.fetch_size):
            facts = []
            for tid, zoid, data in batch:
                last = tid
                decoded = jsonifier.decode((tid, zoid), data)
                if type(decoded) is Decoded:
                    state: Any = decoded.state
                elif decoded.kind is Kind.OK and decoded.json_text is not None:
                    state = orjson.loads(decoded.json_text)
                else:
                    continue
                facts.append(RecordFacts(zoid, tid, decoded.class_name, record_name(zoid, state),
                                         record_edges(decoded.class_name, state)))
            store.apply(facts, [], last, resolve=False)
        _count, version = store.resolve_all(last, quiet=True)
        dirty = store.tree_objects()
        out = []
        for group in read_groups(dirty, store, pg.CurrentStates(states_conn)):
            for a in builder.assembled_actions(build(group, jsonifier), version):
                if a.op == "index" and a.source is not None:
                    out.append({"_op_type": "index", "_index": a.index, "_id": str(a.zoid), "version": a.version,
                                "version_type": "external_gte", "_source": a.source})
        return out
    finally:
        graph.forget(conn, client)
        conn.close()
        states_conn.close()


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def es_cpu_seconds(es: Any) -> float:
    """CPU seconds of the Elasticsearch node process.

    Read from /proc/<pid>/stat when the node runs on this machine, because node stats
    cache the process CPU for a second (too coarse for short variants); node stats
    otherwise.
    """
    nodes = es.nodes.info(metric="process", filter_path="nodes.*.process.id")["nodes"]
    total = 0.0
    for node in nodes.values():
        try:
            with open(f"/proc/{node['process']['id']}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except OSError:
            stats = es.nodes.stats(metric="process")["nodes"]
            return sum(n["process"]["cpu"]["total_in_millis"] for n in stats.values()) / 1000.0
    return total


@dataclass
class Result:
    name: str
    settings: Settings
    code: int
    seconds: float
    docs: int
    indexed: int
    dead: int
    retries: int
    requests: int
    bulk_s: float
    rows: int
    batches: int
    py_cpu: float
    es_cpu: float
    machine_cpu: float
    first_quarter: float
    last_quarter: float
    index_bytes: int
    load: float
    variant: str = ""
    peak_rss: int = 0  #: bytes, of the ``process`` way only


def sampled(counter: Any, stop: threading.Event, interval: float = 0.2) -> list[tuple[float, float]]:
    """Start a thread appending ``(time, counter value)`` every ``interval`` s until ``stop``."""
    samples: list[tuple[float, float]] = []

    def run() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), counter()))
            stop.wait(interval)

    threading.Thread(target=run, daemon=True, name="bench-sampler").start()
    return samples


def quarter_rates(samples: list[tuple[float, float]], total: float) -> tuple[float, float]:
    """Docs/s over the first and the last quarter of ``total`` documents."""

    def time_at(count: float) -> float:
        for (t0, c0), (t1, c1) in zip(samples, samples[1:]):
            if c1 >= count:
                return t0 if c1 == c0 else t0 + (t1 - t0) * (count - c0) / (c1 - c0)
        return samples[-1][0]

    if len(samples) < 3 or total <= 0:
        return 0.0, 0.0
    q = total / 4
    t_start, t_q1, t_q3, t_end = time_at(0.001), time_at(q), time_at(3 * q), time_at(total)
    first = q / (t_q1 - t_start) if t_q1 > t_start else 0.0
    last = q / (t_end - t_q3) if t_end > t_q3 else 0.0
    return first, last


def run_variant(name: str, env_overrides: dict[str, str], db_dsn: str, es_url: str, es: Any,
                prefix_root: str, keep: bool, raw: list | None = None) -> Result:
    """Backfill the corpus into ``<prefix_root>-<name>`` from scratch; measure it."""
    tag = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    env_overrides = dict(env_overrides)
    ignore_above = env_overrides.pop("_IGNORE_ABOVE", None)
    way = env_overrides.pop("_WAY", None)
    before = env_overrides.pop("_BEFORE", None)
    env = {
        "ESINDEXER_PG_DSN": db_dsn,
        "ESINDEXER_ES_URL": es_url,
        "ESINDEXER_SEARCH_ENGINE": search_engine(),  # ESIT_SEARCH_ENGINE=opensearch: OpenSearch
        "ESINDEXER_INDEX_PREFIX": f"{prefix_root}-{tag}",
        "ESINDEXER_CLIENT_ID": f"{prefix_root}-{tag}",
        "ESINDEXER_INDEX_REPLICAS": "0",
        "ESINDEXER_METRICS_PORT": "0",
        **env_overrides,
    }
    settings = load_settings(env=env)
    if way is not None:
        result = run_other_way(way, name, settings, env, es, raw or [], keep, BEFORE[0] if before else None)
        if not keep:
            forget_graph(db_dsn, settings.client_id)
        return result
    metrics = Metrics()
    reg = metrics.registry

    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return reg.get_sample_value(name, labels or {}) or 0.0

    if ignore_above:
        precreate_index(es, settings, int(ignore_above))
    indexer = Indexer(settings, metrics)
    load = os.getloadavg()[0]
    stop = threading.Event()
    samples = sampled(lambda: value("esindexer_documents_total", {"action": "index", "outcome": "ok"}), stop)
    es0, m0, p0 = es_cpu_seconds(es), machine_busy_seconds(), time.process_time()
    t0 = time.perf_counter()
    code = indexer.run(until_caught_up=True)
    seconds = time.perf_counter() - t0
    py_cpu, machine_cpu, es_cpu = time.process_time() - p0, machine_busy_seconds() - m0, es_cpu_seconds(es) - es0
    stop.set()
    docs = int(value("esindexer_documents_total", {"action": "index", "outcome": "ok"}))
    dead = int(value("esindexer_documents_total", {"action": "index", "outcome": "dead_lettered"}))
    retries = sum(m.value for metric in reg.collect() if metric.name == "esindexer_retries"
                  for m in metric.samples if m.name == "esindexer_retries_total")
    samples.append((t0 + seconds, docs))
    first, last = quarter_rates(samples, docs)
    prefix = settings.index_prefix
    es.indices.refresh(index=prefix)
    indexed = es.count(index=prefix)["count"]
    index_bytes = es.indices.stats(index=prefix, metric="store")["_all"]["primaries"]["store"]["size_in_bytes"]
    if not keep:
        drop_prefix(es, prefix)
        forget_graph(db_dsn, settings.client_id)
    return Result(
        name=name, settings=settings, code=code, seconds=seconds, docs=docs, indexed=indexed,
        dead=dead, retries=int(retries),
        requests=int(sum(value("esindexer_bulk_requests_total", {"outcome": o}) for o in ("ok", "retried", "failed"))),
        bulk_s=value("esindexer_bulk_duration_seconds_sum"), rows=int(value("esindexer_batch_size_sum")),
        batches=int(value("esindexer_batch_size_count")), py_cpu=py_cpu, es_cpu=es_cpu,
        machine_cpu=machine_cpu, first_quarter=first, last_quarter=last, index_bytes=index_bytes, load=load,
    )


def run_other_way(way: str, name: str, settings: Settings, env: dict[str, str], es: Any, raw: list,
                  keep: bool, root: str | None = None) -> Result:
    """``raw``: the same documents, pre-serialised, through ``parallel_bulk`` (2 threads, 1,000
    per request) into an index made from esindexer's template; ``process``: ``python -m
    esindexer run --until-caught-up`` with ``env`` (process start included), from the checkout
    ``root`` if given (its compiled extensions built), else from this one."""
    import subprocess

    load = os.getloadavg()[0]
    index = settings.index_for_route(settings.default_route)
    rss = 0
    if way == "raw":
        from elasticsearch.helpers import parallel_bulk

        from esindexer.es.admin import ensure_indices
        from esindexer.es.client import make_es_client

        client = make_es_client(settings)
        ensure_indices(client, settings)
        batch = [{**a, "_index": index} for a in raw]
        es0, m0, p0 = es_cpu_seconds(es), machine_busy_seconds(), time.process_time()
        t0 = time.perf_counter()
        for ok, item in parallel_bulk(client, batch, thread_count=2, chunk_size=1000,
                                      max_chunk_bytes=8 * 1024 * 1024, raise_on_error=False):
            if not ok:
                raise RuntimeError(f"raw bulk item failed: {item}")
        seconds = time.perf_counter() - t0
        py_cpu = time.process_time() - p0
        client.close()
        code = 0
    else:
        base = {k: v for k, v in os.environ.items() if not k.startswith("ESINDEXER_")}
        base["PYTHONPATH"] = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        compiled(base["PYTHONPATH"])
        es0, m0 = es_cpu_seconds(es), machine_busy_seconds()
        t0 = time.perf_counter()
        # Run in the checkout: ``python -m`` puts the working directory first on sys.path, so
        # from another directory PYTHONPATH alone would import that directory's esindexer.
        proc = subprocess.Popen([sys.executable, "-m", "esindexer", "run", "--until-caught-up"], cwd=base["PYTHONPATH"],
                                env={**base, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = [0]
        done = threading.Event()

        def watch() -> None:  # VmHWM, read while it runs (the rusage one counts the fork of this process)
            while not done.wait(0.05):
                try:
                    with open(f"/proc/{proc.pid}/status") as fh:
                        for line in fh:
                            if line.startswith("VmHWM:"):
                                peak[0] = max(peak[0], int(line.split()[1]) * 1024)
                except (OSError, ValueError):
                    pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        err = proc.stderr.read() if proc.stderr else b""
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        done.set()
        watcher.join()
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        py_cpu = usage.ru_utime + usage.ru_stime
        rss = peak[0]
        if code != 0:
            print(f"{name}: esindexer exited {code}: {err.decode(errors='replace')[-2000:]}")
    machine_cpu, es_cpu = machine_busy_seconds() - m0, es_cpu_seconds(es) - es0
    prefix = settings.index_prefix
    t1 = time.perf_counter()
    es.indices.refresh(index=prefix)
    # Outside the timed window: the raw way's documents become searchable only here, while
    # esindexer's bounded run refreshes before it exits (its field check), inside its window.
    print(f"{name}: the refresh after the timed window took {time.perf_counter() - t1:.2f} s")
    indexed = es.count(index=prefix)["count"]
    index_bytes = es.indices.stats(index=prefix, metric="store")["_all"]["primaries"]["store"]["size_in_bytes"]
    if not keep:
        drop_prefix(es, prefix)
    return Result(name=name, settings=settings, code=code, seconds=seconds, docs=indexed, indexed=indexed, dead=0,
                  retries=0, requests=0, bulk_s=0.0, rows=0, batches=0, py_cpu=py_cpu, es_cpu=es_cpu,
                  machine_cpu=machine_cpu, first_quarter=0.0, last_quarter=0.0, index_bytes=index_bytes,
                  load=load, peak_rss=rss)


def forget_graph(db_dsn: str, client_id: str) -> None:
    """Drop a finished variant's object graph: the graph tables are shared by every client
    id, and a round that found earlier rounds' rows beside its own resolved more slowly."""
    import psycopg2

    from esindexer.source import graph

    conn = psycopg2.connect(db_dsn)
    try:
        graph.forget(conn, client_id)
    finally:
        conn.close()


def compiled(root: str) -> None:
    """Write the bytecode of ``root``'s esindexer once, as ``pip install`` does for a user's
    install (and the Docker image). A checkout run from source otherwise compiles its ~100
    modules at every process start where bytecode is not written (``PYTHONDONTWRITEBYTECODE``,
    set on these machines): 0.2-0.25 s that no installed service pays."""
    import compileall

    if root not in _COMPILED:
        compileall.compile_dir(os.path.join(root, "esindexer"), quiet=1)
        _COMPILED.add(root)


_COMPILED: set[str] = set()


def precreate_index(es: Any, settings: Settings, ignore_above: int) -> None:
    """Create the variant's index as esindexer would, but with another flattened ``ignore_above``.

    The service then finds the index existing and keeps its mapping (its template
    applies to new indices only), so this measures a template change without making it.
    The template uses 256: flattened leaves are keywords with doc values, and long prose
    (bodies) indexed whole as one keyword serves no query that the ``text`` field does not.
    """
    from esindexer.es.admin import index_template

    body = index_template(settings)["template"]
    body["mappings"]["properties"]["state"]["ignore_above"] = ignore_above
    es.indices.create(index=settings.index_for_route(settings.default_route), settings=body["settings"],
                      mappings=body["mappings"], aliases=body["aliases"])


def engine_name() -> str:
    """What the figures were measured on (ESIT_SEARCH_ENGINE)."""
    return "OpenSearch" if search_engine() == "opensearch" else "Elasticsearch"


def _es_version(es: Any) -> str:
    """The node version (``GET /`` is not served by the integ-test distribution)."""
    nodes = es.nodes.info(filter_path="nodes.*.version")["nodes"]
    return ", ".join(sorted({n["version"] for n in nodes.values()}))


def drop_prefix(es: Any, prefix: str) -> None:
    """Delete the indices and the index template a variant created."""
    es.options(ignore_status=404).indices.delete(index=f"{prefix}-*", expand_wildcards="all",
                                                 allow_no_indices=True)
    es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}-esindexer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=200_000, help="objects to write (BTree records come on top)")
    parser.add_argument("--per-txn", type=int, default=1_000, help="objects per transaction")
    parser.add_argument("--variants", default=DEFAULT_ORDER,
                        help=f"comma-separated, run in this order; known: {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=2,
                        help="run the list of variants this many times; the summary keeps each one's fastest")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="skip the discarded first baseline run (JIT and caches of Elasticsearch)")
    parser.add_argument("--keep", action="store_true", help="keep the indices and the database")
    parser.add_argument("--stage-rounds", type=int, default=2, help="passes of each stage (the best is kept)")
    parser.add_argument("--no-stages", action="store_true",
                        help="no stage timings (they hold every stage's output: for corpora of millions)")
    parser.add_argument("--before", metavar="PATH",
                        help="a checkout of earlier code (e.g. `git archive` of a commit, its .so files copied in) "
                             "that the variant process-before runs")
    args = parser.parse_args(argv)
    if args.before:
        BEFORE[:] = [os.path.abspath(args.before)]
    pg, es_url = servers_from_env()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if {"process-before", "process-objects-before"} & set(names) and not args.before:
        parser.error("the variants process-before and process-objects-before need --before PATH")
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    import logging

    # One warning per dead letter would bury the figures; retries are counted instead.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    es = search_client(es_url, request_timeout=120)
    prefix_root = f"bench-{uuid.uuid4().hex[:6]}"
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"{engine_name()} {_es_version(es)}; index prefix {prefix_root}-*")
    with (fresh_database(pg, prefix="esbench") if not args.keep else _kept_database(pg)) as db_dsn:
        db = open_zodb(db_dsn, keep_history=False)
        try:
            t = time.perf_counter()
            made = write_corpus(db, args.objects, args.per_txn)
            wrote = time.perf_counter() - t
        finally:
            db.close()
        print(f"corpus: wrote {made:,} objects (+ BTree records) in transactions of {args.per_txn:,} "
              f"in {wrote:.1f} s ({made / wrote:,.0f} objects/s) -- not part of the measurement")
        import psycopg2

        vac = psycopg2.connect(db_dsn)
        vac.autocommit = True
        with vac.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
        vac.close()

        defaults = load_settings(env={"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url,
                                     "ESINDEXER_SEARCH_ENGINE": search_engine()})
        st = documents_only(db_dsn, defaults) if args.no_stages else measure_stages(db_dsn, defaults, args.stage_rounds)
        ok = st.kinds["ok"]
        mb = st.state_bytes / 1e6
        print(f"records: {st.rows:,} rows, {mb:.1f} MB of state (mean {st.state_bytes / st.rows:.0f} B); "
              f"kinds {dict(st.kinds)}; classes {dict(st.classes.most_common(8))}")
        print(f"documents: {ok:,}, {st.doc_bytes / 1e6:.1f} MB of JSON (mean {st.doc_bytes / ok:.0f} B; "
              f"flattened: {st.doc_bytes_flat / 1e6:.1f} MB); bulk bodies {st.body_bytes / 1e6:.1f} MB")
        if not args.no_stages:
            print_stages(st, defaults, args.stage_rounds, ok)

        raw_objects: list[dict[str, Any]] = []
        if "raw-objects" in names:
            raw_objects = object_documents(db_dsn, load_settings(env={
                "ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_SEARCH_ENGINE": search_engine(),
                "ESINDEXER_DOCUMENTS": "objects"}))
            print(f"object documents: {len(raw_objects):,}, "
                  f"{sum(len(d['_source']) for d in raw_objects) / 1e6:.1f} MB of JSON (the raw-objects baseline's)")

        results: list[Result] = []
        plan = [("warm-up", "baseline")] if args.warm_up else []
        plan += [(f"{name} #{k + 1}", name) for k in range(args.rounds) for name in names]
        try:
            for label, name in plan:
                r = run_variant(label, VARIANTS[name], db_dsn, es_url, es, prefix_root, args.keep,
                                raw_objects if name == "raw-objects" else st.raw)
                r.variant = name
                results.append(r)
                s = r.settings
                print(f"{label}: exit {r.code}, {r.retries} retries, {r.docs:,} docs in {r.seconds:.1f} s "
                      f"= {r.docs / r.seconds:,.0f} docs/s, "
                      f"{mb / r.seconds:.1f} MB/s state, {st.doc_bytes / 1e6 / r.seconds:.1f} MB/s JSON; "
                      f"[{s.state_mapping}, concurrency {s.bulk_concurrency}, max_docs {s.bulk_max_docs}] "
                      f"{r.requests} bulks, {r.bulk_s:.1f} s in bulk "
                      f"(mean {1000 * r.bulk_s / max(r.requests, 1):.0f} ms), "
                      f"{r.rows:,} rows in {r.batches} batches; count {r.indexed:,}, dead letters {r.dead}; "
                      f"CPU s: python {r.py_cpu:.1f}, ES {r.es_cpu:.1f}, machine {r.machine_cpu:.1f} "
                      f"of {2 * r.seconds:.1f}; docs/s first/last quarter "
                      f"{r.first_quarter:,.0f}/{r.last_quarter:,.0f}; "
                      f"index {r.index_bytes / 1e6:.0f} MB; load {r.load:.2f}"
                      + (f"; peak RSS {r.peak_rss / 2**20:.0f} MiB" if r.peak_rss else ""), flush=True)
        finally:
            if not args.keep:
                for r in results:
                    drop_prefix(es, r.settings.index_prefix)

    print_summary([r for r in results if r.name != "warm-up"], names, st, mb)
    # documents=objects writes one document per object of the tree (the documents and folders
    # held under their ids, and the root), not one per record: its count is checked apart
    bad = [r.name for r in results if r.code != 0 or (r.indexed + r.dead != ok and r.settings.documents != "objects")]
    for r in results:
        if r.settings.documents == "objects":
            print(f"{r.name}: {r.indexed:,} object documents (one per object of the tree), {r.dead} dead letters")
    if bad:
        print(f"WARNING: variants {bad} did not settle exactly {ok:,} documents (indexed + dead-lettered)")
    return 1 if bad else 0


def print_stages(st: Stages, defaults: Settings, stage_rounds: int, ok: int) -> None:
    """The stage table: Python CPU per document of each stage alone."""
    print(f"stages alone, one thread, Python CPU, best of {stage_rounds} (no Elasticsearch); the direct path "
          f"built {st.direct:,} of {ok:,} documents, the rest took the text path:")
    print("| stage | CPU s | rows or docs/s | µs per document |")
    print("|---|---:|---:|---:|")
    for label, secs in (("read (follow.updates)", st.read_s),
                        ("decode (Jsonifier.decode)", st.decode_s),
                        (f"shape from the state (index_action_from_state, {defaults.state_mapping})", st.direct_s),
                        ("**decode and shape (DocumentBuilder.record, the service's path)**", st.record_s),
                        ("text path: convert (Jsonifier.convert)", st.convert_s),
                        (f"text path: shape (DocumentBuilder.index_action, {defaults.state_mapping})", st.build_s),
                        ("text path: shape, state_mapping=flattened (for comparison)", st.build_flat_s),
                        (f"bulk body ({defaults.bulk_max_docs} per body)", st.body_s)):
        print(f"| {label} | {secs:.2f} | {ok / secs:,.0f} | {1e6 * secs / ok:.1f} |")
    cpu = st.read_s + st.record_s + st.body_s
    text = st.read_s + st.convert_s + st.build_s + st.body_s
    print(f"| **read + record + body (the service's path)** | {cpu:.2f} | {ok / cpu:,.0f} docs/s "
          f"| **{1e6 * cpu / ok:.1f}** |")
    print(f"| read + convert + shape + body (the text path) | {text:.2f} | {ok / text:,.0f} docs/s "
          f"| {1e6 * text / ok:.1f} |")


def print_summary(results: list[Result], names: list[str], st: Stages, mb: float) -> None:
    """One row per variant: its fastest round (the least disturbed), every round's docs/s beside it."""
    cores = os.cpu_count() or 1
    best: dict[str, Result] = {}
    rounds: dict[str, list[float]] = collections.defaultdict(list)
    for r in results:
        rounds[r.variant].append(r.docs / r.seconds)
        if r.variant not in best or r.seconds < best[r.variant].seconds:
            best[r.variant] = r
    ref = best["baseline"].docs / best["baseline"].seconds if "baseline" in best else None
    print()
    print("Fastest round of each variant (all rounds' docs/s in the last column):")
    print("| variant | state_mapping | concurrency | max_docs | s | docs/s | MB/s state | MB/s JSON "
          "| vs baseline | dead letters | bulks | s in bulk | mean bulk ms "
          "| CPU s py / ES / machine (wall x cores) | docs/s 1st / last quarter | index MB "
          "| min per 1M objects | docs/s per round |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|")
    for name in dict.fromkeys(names):
        if name not in best:
            continue
        r = best[name]
        s = r.settings
        rate = r.docs / r.seconds
        per_million = (1e6 / (r.rows / r.seconds)) / 60 if r.rows else 0
        print(f"| {name} | {s.state_mapping} | {s.bulk_concurrency} | {s.bulk_max_docs} | {r.seconds:.1f} "
              f"| {rate:,.0f} | {mb / r.seconds:.1f} | {st.doc_bytes / 1e6 / r.seconds:.1f} "
              f"| {rate / ref if ref else 0:.2f}x | {r.dead:,} | {r.requests} | {r.bulk_s:.1f} "
              f"| {1000 * r.bulk_s / max(r.requests, 1):.0f} "
              f"| {r.py_cpu:.0f} / {r.es_cpu:.0f} / {r.machine_cpu:.0f} ({cores * r.seconds:.0f}) "
              f"| {r.first_quarter:,.0f} / {r.last_quarter:,.0f} | {r.index_bytes / 1e6:.0f} "
              f"| {per_million:.1f} | {' / '.join(f'{x:,.0f}' for x in rounds[name])} |")
    for name, rates in rounds.items():
        if len(rates) >= 2:
            spread = (max(rates) - min(rates)) / max(rates)
            if spread > 0.15:
                print(f"{name}: rounds {100 * spread:.0f} % apart -- disturbed; repeat for a firmer figure")
    if "raw" in best:
        print_ratios(results, names, best, rounds)
    if "raw-objects" in best:
        print_ratios(results, names, best, rounds, baseline="raw-objects")


def print_ratios(results: list[Result], names: list[str], best: dict[str, Result],
                 rounds: dict[str, list[float]], baseline: str = "raw") -> None:
    """Each way against the raw bulk of the same documents (``baseline``: ``raw``, or
    ``raw-objects`` for the object model's): the best rates' ratio, and each round's ratio
    to the raw round of the same round (interleaved, so equally disturbed)."""
    raw = best[baseline].docs / best[baseline].seconds
    print()
    print(f"Against the raw bulk of the same documents ({baseline}: parallel_bulk, 2 threads, 1,000 per request), "
          "same run:")
    print("| way | docs/s (best) | ratio to raw (best / best) | ratio per round | Python CPU µs/doc "
          "| search node CPU µs/doc | peak RSS MiB |")
    print("|---|---:|---:|---|---:|---:|---:|")
    raw_rounds = rounds[baseline]
    objects = baseline == "raw-objects"
    for name in dict.fromkeys(names):
        if name not in best or (best[name].settings.documents == "objects") != objects:
            continue
        r = best[name]
        per_round = " / ".join(f"{x / y:.2f}" for x, y in zip(rounds[name], raw_rounds))
        rss = f"{r.peak_rss / 2**20:.0f}" if r.peak_rss else ""
        print(f"| {name} | {r.docs / r.seconds:,.0f} | {r.docs / r.seconds / raw:.2f} | {per_round} "
              f"| {1e6 * r.py_cpu / max(r.docs, 1):.0f} | {1e6 * r.es_cpu / max(r.docs, 1):.0f} | {rss} |")


class _kept_database:
    """Like tests.support.fresh_database, but the database is left for inspection."""

    def __init__(self, admin_dsn: str):
        self._admin = admin_dsn

    def __enter__(self) -> str:
        import psycopg2

        from tests.support import dsn_for_database

        name = f"esbench_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(self._admin)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        conn.close()
        print(f"keeping database {name}")
        return dsn_for_database(self._admin, name)

    def __exit__(self, *exc: Any) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
