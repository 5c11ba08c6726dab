"""Benchmark esindexer.convert.jsonifier against newt.db's Jsonifier on the same records.

Usage (servers from ``eval "$(scripts/services env)"``)::

    .venv/bin/python bench/jsonify.py [--objects 20000] [--repeat 3] [--no-pin] [--per-kind 2000] [--only-kinds]

It creates a scratch database on ESIT_PG_DSN, writes a corpus with real ZODB
+ RelStorage (custom classes with ~10 attributes, persistent mappings and lists, nested
references, BTrees, which both converters skip, and a few large records), reads every
``object_state`` row, then converts all rows with esindexer and with newt.db in the same
process, pinned to one CPU. It prints records/s and MB/s of state for each (best of
``--repeat`` runs), the ratio, and checks that both give the same class, ghost pickle
and parsed JSON wherever newt.db converts a record. The database is dropped at the end.
(``prescan=False`` is no longer measured: it changes nothing since the pre-scan also
bounds nesting depth, docs/json.md.)

Then, unless ``--per-kind 0``, the per-kind table: ``--per-kind`` records (2,000 by
default) of each kind that once converted far slower than the typical record (issue 13;
tests/convert/kinds.py): Python-2-era records (assembled opcode by opcode as ZODB 3
wrote them; once with text as unicode, once as Latin-1 py2 str), cyclic structures, dates and times, non-persistent instances and
collections, records naming classes that no longer exist; all but the first two written
with real ZODB + RelStorage into a second scratch database. Each kind (and the typical
corpus again) is converted by esindexer and newt.db alternately, ``--repeat`` times
each, and the table gives the median rates and the median of the per-pass ratios, timed
in CPU time of the converting thread (``time.thread_time``): on a shared machine, wall
time also counts the time other processes hold the core. The
dates kind is compared without the attributes that hold deliberate differences (an
aware datetime's offset and a time: docs/json.md, 14 and 15).

``--baseline REV`` prints only a side-by-side table instead: the converter module as it was at git
revision REV (``esindexer/convert/jsonifier.py`` only, loaded under another name; the
modules it imports are today's) against today's, alternating passes on every corpus,
in thread CPU time, with the median of the per-pass ratios.
Nothing is asserted about speed: the figures go into docs/performance.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import random
import statistics
import sys
import time

import persistent
import psycopg2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import esindexer.convert.scan  # noqa: E402
from esindexer.convert.jsonifier import Jsonifier  # noqa: E402
from tests.convert.kinds import ASSEMBLED, KINDS, py2_records, write_kinds  # noqa: E402
from tests.support import fresh_database, open_zodb  # noqa: E402

#: Top-level attributes compared without: deliberate differences (docs/json.md 14, 15).
DEVIATING = {"dates": ("opens", "effective", "expires")}


class Article(persistent.Persistent):
    """~10 attributes, like a typical content object."""


class Folder(persistent.Persistent):
    """Holds references to its children."""


class Person(persistent.Persistent):
    pass


WORDS = ["alpha", "beta", "gamma", "delta", "report", "budget", "meeting", "review", "draft", "final", "customer", "order", "invoice", "shipping", "status", "priority", "team", "project", "release", "notes", "summary"]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def write_corpus(db, objects: int, seed: int = 42) -> None:
    """Write ``objects`` persistent objects in transactions of 2,000."""
    import transaction
    from BTrees.OOBTree import OOBTree
    from persistent.list import PersistentList
    from persistent.mapping import PersistentMapping

    rng = random.Random(seed)
    conn = db.open()
    root = conn.root()
    people = [Person() for _ in range(50)]
    for i, p in enumerate(people):
        p.name, p.email, p.age = f"Person {i}", f"p{i}@example.org", 20 + i
    root["people"] = PersistentList(people)
    index = root["index"] = OOBTree()
    folders: list = []
    made = 0
    while made < objects:
        folder = Folder()
        folder.title = sentence(rng, 3)
        folder.children = PersistentList()
        folder.settings = PersistentMapping({"sort": "date", "public": True, "size": 25})
        folders.append(folder)
        root[f"folder{len(folders)}"] = folder
        for _ in range(200):
            a = Article()
            a.title = sentence(rng, 6)
            a.description = sentence(rng, 20)
            a.body = " ".join(sentence(rng, 12) for _ in range(rng.randint(1, 4)))
            a.created = datetime.datetime(2024, 1, 1) + datetime.timedelta(minutes=rng.randint(0, 10**6))
            a.modified = a.created + datetime.timedelta(hours=3)
            a.author = rng.choice(people)
            a.tags = rng.sample(WORDS, 3)
            a.views = rng.randint(0, 100000)
            a.rating = rng.random() * 5
            a.published = rng.random() < 0.8
            a.meta = {"lang": "en", "words": rng.randint(10, 2000), "flags": [1, 2]}
            a.parent = folder
            folder.children.append(a)
            index[f"{len(folders)}-{len(folder.children)}"] = a
            made += 1
            if made % 2000 == 0:
                transaction.commit()
        if made >= objects:
            break
    for i in range(5):  # a few large records
        big = Article()
        big.title = f"Large record {i}"
        big.lines = [sentence(rng, 8) for _ in range(2000)]
        big.refs = PersistentList(folders[:])
        root[f"large{i}"] = big
    transaction.commit()
    conn.close()


def read_rows(dsn: str) -> list[tuple[int, bytes]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("select zoid, state from object_state order by zoid")
            return [(zoid, bytes(state)) for zoid, state in cur]
    finally:
        conn.close()


def read_kinds(admin_dsn: str, per_kind: int) -> dict[str, list[tuple[int, bytes]]]:
    """The per-kind corpora: written with ZODB + RelStorage (py2: assembled)."""
    with fresh_database(admin_dsn, prefix="esbench") as db_dsn:
        db = open_zodb(db_dsn, keep_history=False)
        try:
            zoids = write_kinds(db, per_kind)
        finally:
            db.close()
        rows = dict(read_rows(db_dsn))
    assembled = {kind: py2_records(per_kind, latin1=latin1) for kind, latin1 in ASSEMBLED.items()}
    return {kind: assembled[kind] if kind in ASSEMBLED else [(z, rows[z]) for z in zoids[kind]] for kind in KINDS}


def parity(mine, newt, kind: str, rows) -> tuple[int, int]:
    """(records compared, records that differ) where newt.db gives JSON."""
    compared = differ = 0
    drop = DEVIATING.get(kind, ())
    for zoid, state in rows:
        expected = newt(zoid, state)
        if expected[2] is None:
            continue
        got = mine.convert(zoid, state)
        compared += 1
        a, b = json.loads(got.json_text), json.loads(expected[2])
        for key in drop:
            a.pop(key, None), b.pop(key, None)
        if got.class_name != expected[0] or a != b:
            differ += 1
    return compared, differ


def per_kind_table(corpora: dict[str, list[tuple[int, bytes]]], repeat: int) -> int:
    """Print the per-kind table (esindexer and newt.db alternately); return the number
    of records that differ."""
    from newt.db.jsonpickle import Jsonifier as NewtJsonifier

    print(f"\nper kind (CPU time of the converting thread, one core; {repeat} alternating passes each, "
          f"medians; pre-scan: {scan_kind()})")
    print("| kind of record | records | mean bytes | esindexer records/s | newt.db records/s | vs newt.db | parity |")
    print("|---|---:|---:|---:|---:|---:|---|")
    total_differ = 0
    for kind, rows in corpora.items():
        mine, newt = Jsonifier(), NewtJsonifier()
        compared, differ = parity(mine, newt, kind, rows)
        total_differ += differ
        t_mine, t_newt, ratios = [], [], []
        for _ in range(repeat):
            a, b = timed(mine.convert, rows, 1, time.thread_time), timed(newt, rows, 1, time.thread_time)
            t_mine.append(a)
            t_newt.append(b)
            ratios.append(b / a)
        n = len(rows)
        mean = sum(len(s) for _, s in rows) / n
        print(f"| {kind} | {n:,} | {mean:,.0f} | {n / statistics.median(t_mine):,.0f} | "
              f"{n / statistics.median(t_newt):,.0f} | **{statistics.median(ratios):.1f}x** "
              f"({min(ratios):.1f}-{max(ratios):.1f}) | {compared:,} compared, {differ} differ |")
    return total_differ


def load_baseline(rev: str):
    """The ``Jsonifier`` class of ``esindexer/convert/jsonifier.py`` at git revision ``rev``."""
    import importlib.util
    import subprocess
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(["git", "-C", root, "show", f"{rev}:esindexer/convert/jsonifier.py"],
                            check=True, capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix="_jsonifier_baseline.py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("esindexer_bench_baseline_jsonifier", f.name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.unlink(f.name)
    return module.Jsonifier


def baseline_table(corpora: dict[str, list[tuple[int, bytes]]], rev: str, repeat: int) -> int:
    """Print today's converter against the one at ``rev``, alternating passes; return the
    number of records whose conversion differs between the two."""
    old_cls = load_baseline(rev)
    print(f"\nside by side with {rev} (CPU time of the converting thread, one core; {repeat} alternating "
          f"passes each, medians; pre-scan: {scan_kind()})")
    print(f"| kind of record | records | {rev} records/s | today records/s | today / {rev} | same output |")
    print("|---|---:|---:|---:|---:|---|")
    differ_total = 0
    for kind, rows in corpora.items():
        old, new = old_cls(), Jsonifier()
        differ = sum(1 for z, s in rows if tuple(old.convert(z, s)) != tuple(new.convert(z, s)))
        differ_total += differ
        t_old, t_new, ratios = [], [], []
        for i in range(repeat):
            if i % 2:  # alternate which goes first, so that neither always runs warm
                b = timed(new.convert, rows, 1, time.thread_time)
                a = timed(old.convert, rows, 1, time.thread_time)
            else:
                a = timed(old.convert, rows, 1, time.thread_time)
                b = timed(new.convert, rows, 1, time.thread_time)
            t_old.append(a)
            t_new.append(b)
            ratios.append(a / b)
        n = len(rows)
        print(f"| {kind} | {n:,} | {n / statistics.median(t_old):,.0f} | {n / statistics.median(t_new):,.0f} | "
              f"**{statistics.median(ratios):.3f}** ({min(ratios):.3f}-{max(ratios):.3f}) | "
              f"{'yes' if not differ else f'{differ} differ'} |")
    return differ_total


def scan_kind() -> str:
    """Which pre-scan and unpickler source run: the C extensions or the Python fallbacks."""
    scan = "C extension" if esindexer.convert.scan.scan is not esindexer.convert.scan.scan_py else "pure Python"
    try:
        import esindexer.convert.reader as reader
    except ImportError:  # before the reader module existed
        return scan
    source = "C extension" if reader.Source is not reader.PySource else "pure Python"
    return f"{scan}; source and find_class: {source}"


def timed(convert, rows, repeat: int, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        for zoid, state in rows:
            convert(zoid, state)
        best = min(best, clock() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    parser.add_argument("--per-kind", type=int, default=2000, metavar="N",
                        help="records of each kind in the per-kind table (0: no table)")
    parser.add_argument("--only-kinds", action="store_true",
                        help="only the per-kind table (the typical corpus is --objects objects)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also time the converter module of git revision REV side by side with today's")
    args = parser.parse_args(argv)
    dsn = os.environ.get("ESIT_PG_DSN")
    if not dsn:
        print("set ESIT_PG_DSN (eval \"$(scripts/services env)\")", file=sys.stderr)
        return 2
    from newt.db.jsonpickle import Jsonifier as NewtJsonifier

    with fresh_database(dsn, prefix="esbench") as db_dsn:
        db = open_zodb(db_dsn, keep_history=False)
        try:
            write_corpus(db, args.objects)
        finally:
            db.close()
        rows = read_rows(db_dsn)
    corpora = read_kinds(dsn, args.per_kind) if args.per_kind > 0 else {}
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    if args.baseline:  # only the side-by-side table
        return 1 if baseline_table({"typical": rows, **corpora}, args.baseline, max(args.repeat, 5)) else 0
    if args.only_kinds:
        return 1 if per_kind_table({"typical": rows, **corpora}, max(args.repeat, 3)) else 0
    mine, newt = Jsonifier(), NewtJsonifier()
    total_bytes = sum(len(s) for _, s in rows)
    kinds = collections.Counter(mine.convert(z, s).kind for z, s in rows)
    classes = collections.Counter((mine.convert(z, s).class_name or "?").rsplit(".", 1)[-1] for z, s in rows)

    compared = mismatched = newt_none = 0
    for zoid, state in rows:
        expected = newt(zoid, state)
        got = mine.convert(zoid, state)
        if expected[2] is None:
            newt_none += 1
            continue
        compared += 1
        if (got.class_name != expected[0] or got.ghost_pickle != bytes(expected[1])
                or json.loads(got.json_text) != json.loads(expected[2])):
            mismatched += 1

    t_mine = timed(mine.convert, rows, args.repeat)
    t_call = timed(mine, rows, args.repeat)
    t_newt = timed(newt, rows, max(1, args.repeat - 1))
    n = len(rows)
    mb = total_bytes / 1e6
    print(f"records: {n:,} ({mb:.1f} MB of state, mean {total_bytes / n:.0f} bytes); "
          f"kinds {dict(kinds)}; classes {dict(classes.most_common(8))}")
    print(f"parity: {compared:,} records compared (newt.db gave no JSON for {newt_none:,}), "
          f"{mismatched} differ")
    print("| converter | records/s | MB/s |")
    print("|---|---:|---:|")
    print(f"| esindexer `convert()` | {n / t_mine:,.0f} | {mb / t_mine:.1f} |")
    print(f"| esindexer `__call__` | {n / t_call:,.0f} | {mb / t_call:.1f} |")
    print(f"| newt.db 0.9.0 | {n / t_newt:,.0f} | {mb / t_newt:.1f} |")
    print(f"ratio vs newt.db: convert {t_newt / t_mine:.1f}x")
    if corpora:
        differ = per_kind_table({"typical": rows, **corpora}, max(args.repeat, 3))
        mismatched += differ
    return 1 if mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
