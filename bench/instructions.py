"""Count the CPU instructions the reader side spends per record: a figure that load on the machine does not move.

Usage (servers from ``eval "$(scripts/services env)"``; needs ``valgrind``)::

    .venv/bin/python bench/instructions.py [--objects 3000] [--rows 2000] [--before PATH]

On a shared 2-core machine, timings of one stage differ by 30 % from one run to the next;
the number of instructions executed does not. This writes bench/backfill.py's corpus
(``--objects``) into a scratch database, reads its rows once, and runs, under
``valgrind --tool=callgrind``, a child that does what the service's reader thread does
for ``--rows`` records (:func:`esindexer.pipeline.isolate.convert_in_process`, the
request buffer and the bulk bodies), after a warm-up on other rows; a second child does
only the warm-up, and the difference divided by ``--rows`` is the figure: instructions
per record, in a warm process, without reading from PostgreSQL or sending.

``--before PATH`` runs the same children from another checkout of the code (``git
archive`` of a commit, with its compiled extensions copied in), so that a change is
measured against the code before it, on the same records.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child(rows_file: str, count: int) -> None:
    """The measured work: ``count`` records after a warm-up of 300 (``count`` 0: warm-up only)."""
    from esindexer.config import load_settings
    from esindexer.convert.configure import build_jsonifier
    from esindexer.documents import DocumentBuilder
    from esindexer.es import bulk
    from esindexer.pipeline.isolate import convert_in_process
    from esindexer.pipeline.reader import RequestBuffer

    with open(rows_file, "rb") as fh:
        rows = pickle.load(fh)
    settings = load_settings(env={"ESINDEXER_PG_DSN": "postgresql://x@localhost/x"})
    jsonifier, builder = build_jsonifier(settings), DocumentBuilder(settings)
    body = getattr(bulk, "bulk_body", None) or (lambda actions: b"\n".join([*bulk.iter_lines(actions), b""]))

    def run(part: list) -> None:
        buffer = RequestBuffer(settings.bulk_max_docs, settings.bulk_max_bytes)
        for tid, zoid, _data, conversion, built in convert_in_process(jsonifier, builder, part):
            for action in [built] if built is not None else builder.actions_for(tid, zoid, conversion):
                if buffer.add(action):
                    body(buffer.take())
        if buffer:
            body(buffer.take())

    run(rows[:300])
    run(rows[500:500 + count])


def instructions(root: str, rows_file: str, count: int) -> int:
    """Instructions callgrind counts for a child run from the checkout ``root``."""
    env = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                           os.path.abspath(__file__), "--child", rows_file, str(count)],
                          env=env, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if not found:
        raise RuntimeError(done.stderr[-2000:])
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=3000, help="objects of bench/backfill.py's corpus to write")
    parser.add_argument("--rows", type=int, default=2000, help="records measured (after 500 for the warm-up)")
    parser.add_argument("--before", metavar="PATH", help="also measure the checkout at PATH, on the same records")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    sys.path.insert(0, ROOT)
    sys.path.insert(0, HERE)
    import backfill

    from esindexer.source import follow
    from tests.support import servers_from_env

    pg, _ = servers_from_env()
    with backfill.corpus_database(pg, args.objects) as dsn:
        rows = [(tid, zoid, bytes(data) if data is not None else None)
                for batch in follow.updates(dsn, end_tid=follow.latest_tid(dsn)) for tid, zoid, data in batch]
    if len(rows) < 500 + args.rows:
        parser.error(f"{len(rows)} rows: too few for --rows {args.rows} (write more --objects)")
    with tempfile.NamedTemporaryFile(suffix=".pickle") as fh:
        pickle.dump(rows, fh)
        fh.flush()
        print(f"{len(rows):,} rows; {args.rows:,} measured, under callgrind (instructions per record, "
              "reader side: decode, shape, request buffer, bulk body)")
        print("| code | instructions per record |")
        print("|---|---:|")
        ways = [(f"before ({args.before})", os.path.abspath(args.before))] if args.before else []
        for label, root in [*ways, ("this checkout", ROOT)]:
            per = (instructions(root, fh.name, args.rows) - instructions(root, fh.name, 0)) / args.rows
            print(f"| {label} | {per:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
