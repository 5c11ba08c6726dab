"""The crash guard: a record that kills the process must not stop indexing for ever.

The crash is staged with a transform that calls ``os.abort()`` for one object
(``tests/crash_transform.py``); everything else is the production path. The end-to-end
test runs ``python -m esindexer`` the way a supervisor would restart it, against real
PostgreSQL (ZODB + RelStorage writing) and a real Elasticsearch.
"""

from __future__ import annotations

import json
import pickle
import signal
import socket
import subprocess
import sys
import urllib.request

import psycopg2
import transaction

from esindexer.config import load_settings
from esindexer.convert.configure import build_jsonifier
from esindexer.documents import DocumentBuilder
from esindexer.pipeline.crashguard import Assessment, assess
from esindexer.pipeline.isolate import IsolatedConverter, convert_in_process, death_reason
from esindexer.source.runs import GuardRow
from tests.indexing import Page, dead_letters, docs, latest_tid, progress, zoid_of
from tests.pipeline.crash_transform import MARKER
from tests.support import esindexer_env, run_esindexer, wait_for


def _settings(transform: str):
    return load_settings(env={"ESINDEXER_PG_DSN": "postgresql://nobody@127.0.0.1/none",
                              "ESINDEXER_TRANSFORM": transform})


def _record(title: str, body: str = "") -> bytes:
    """A ZODB record as ZODB writes it: the class pickle, then the state pickle."""
    return pickle.dumps((Page, None), 3) + pickle.dumps({"title": title, "body": body, "tags": []}, 3)


def _rows(count: int, poison: set[int] = frozenset()) -> list[tuple[int, int, bytes]]:
    return [(1000 + n, n, _record(f"page {n}", MARKER if n in poison else "text")) for n in range(count)]


# --- the child-process converter, without servers ----------------------------------------


def test_records_that_kill_the_child_are_isolated_and_the_others_converted_as_in_process():
    settings = _settings("tests.pipeline.crash_transform.abort_on_marker")
    rows = _rows(12, poison={4, 9})
    crashes: list[tuple[int, int, str]] = []
    isolated = IsolatedConverter(settings, on_crash=lambda tid, zoid, reason: crashes.append((tid, zoid, reason)))
    try:
        got = list(isolated.records(rows))
    finally:
        isolated.close()
    assert [r[:3] for r in got] == rows  # every row, once, in order
    assert [r[1] for r in got if r[3].kind == "crashed"] == [4, 9]
    assert {r[3].class_name for r in got if r[3].kind == "crashed"} == {"tests.indexing.Page"}
    assert [(tid, zoid) for tid, zoid, _ in crashes] == [(1004, 4), (1009, 9)]
    assert all("killed by SIGABRT" in reason for _, _, reason in crashes)
    assert isolated.crashed == 2
    # The others: exactly what the service's own process makes of them.
    plain = load_settings(env={"ESINDEXER_PG_DSN": "postgresql://nobody@127.0.0.1/none"})
    expected = {zoid: action for _tid, zoid, _data, _conversion, action in convert_in_process(
        build_jsonifier(plain), DocumentBuilder(plain), [r for r in rows if r[1] not in (4, 9)])}
    assert {zoid: action for _tid, zoid, _data, conversion, action in got if conversion.kind == "ok"} == expected


def test_a_crash_no_single_record_causes_dead_letters_nothing():
    """Every fifth record kills whichever process converts it: the suspect converts on its
    own, so nothing is called crashed and everything is converted."""
    isolated = IsolatedConverter(_settings("tests.pipeline.crash_transform.abort_every_fifth"))
    try:
        got = list(isolated.records(_rows(13)))
    finally:
        isolated.close()
    assert [r[1] for r in got] == list(range(13))
    assert {r[3].kind for r in got} == {"ok"} and isolated.crashed == 0


def test_death_reasons_name_the_signal_or_the_exit_code():
    assert death_reason(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert death_reason(-signal.SIGKILL) == "killed by SIGKILL"
    assert death_reason(3) == "exited with code 3"


def _row(running: bool, death: int | None, exits: int, start: int = 10, guard_until: int | None = None):
    return GuardRow("run", running, None, None, start, death, exits, guard_until)


def test_assessment_counts_deaths_in_a_row_at_the_same_progress():
    assert assess(None, 10) == Assessment(False, 0, None, False)
    assert assess(_row(False, None, 0), 10) == Assessment(False, 0, None, False)  # a clean exit
    assert assess(_row(True, None, 0), 10).unclean_exits == 1  # first death
    assert assess(_row(True, 10, 1), 10).unclean_exits == 2  # died again at the same position
    assert assess(_row(True, 10, 3), 25).unclean_exits == 1  # progress moved: a new position
    # An unfinished guarded pass resumes, clean exit or not; a finished one does not.
    assert assess(_row(False, None, 0, guard_until=50), 20).resume_until == 50
    assert assess(_row(False, None, 0, guard_until=50), 50).resume_until is None
    died_guarded = assess(_row(True, 10, 2, start=10, guard_until=50), 10)
    assert died_guarded.resume_until == 50 and died_guarded.guarded_before


# --- end to end ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _status(env: dict[str, str]) -> dict:
    done = run_esindexer("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _messages(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_a_record_that_crashes_the_process_is_isolated_after_the_crash_loop(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    root = conn.root()
    pages = []
    for txn in range(3):  # the poison object in the middle transaction, amid good ones
        for n in range(100):
            page = Page(f"page {txn}-{n}", body=MARKER if (txn, n) == (1, 50) else "lorem ipsum")
            root[f"p{txn}-{n}"] = page
            pages.append(page)
        transaction.commit()
    poison = zoid_of(root["p1-50"])
    expected = {0} | {zoid_of(p) for p in pages}  # the root and the pages
    alias = es_prefix.rstrip("-")
    env = {"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_INDEX_PREFIX": alias,
           "ESINDEXER_INDEX_REPLICAS": "0", "ESINDEXER_METRICS_PORT": "0", "ESINDEXER_LOG_FORMAT": "json",
           "ESINDEXER_BATCH_LIMIT": "50", "ESINDEXER_FETCH_SIZE": "20", "ESINDEXER_BULK_MAX_DOCS": "25",
           "ESINDEXER_POLL_TIMEOUT": "1", "ESINDEXER_TRANSFORM": "tests.pipeline.crash_transform.abort_on_marker"}

    # 1. The crash loop: each start dies by SIGABRT at the poison record. Progress may creep
    #    up to its batch in the first runs; then the deaths repeat at one position until
    #    `status` says the next start is guarded (threshold: the default, 2).
    crashes = 0
    guard = None  # (`status` before the first run would be of a client id that never ran: exit 2)
    while guard != "at next start, up to the newest tid":
        died = run_esindexer("run", "--until-caught-up", env=env)
        assert died.returncode == -signal.SIGABRT, died.stderr[-2000:]
        assert "Fatal Python error: Aborted" in died.stderr  # faulthandler: not a silent death
        crashes += 1
        assert crashes <= 6, "no crash loop detected"
        report = _status(env)
        assert report["crash_guard"]["last_run"] == "died without a clean exit"
        assert report["crash_guard"]["unclean_exits"] >= 1
        guard = report["crash_guard"]["guard"]
    assert crashes >= 2
    assert progress(db_dsn) < latest_tid(db_dsn) and poison not in docs(es, alias)

    # 2. The guarded start: the poison record is isolated and dead-lettered, everything else
    #    is indexed, and the service goes on running (and serving /metrics) afterwards.
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "esindexer", "run"],
                            env=esindexer_env(**{**env, "ESINDEXER_METRICS_PORT": str(port)}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: progress(db_dsn) == latest_tid(db_dsn), timeout=120, message="guarded pass done")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert set(docs(es, alias)) == expected - {poison}
    [letter] = dead_letters(db_dsn)
    zoid, _tid, class_name, kind, reason, _document, has_record = letter
    assert (zoid, kind, has_record, class_name) == (poison, "crashed", True, "tests.indexing.Page")
    assert "killed by SIGABRT" in reason
    lines = _messages(err)
    said = [line["message"] for line in lines]
    assert any(m.startswith("crash loop:") for m in said), said
    assert any(m.startswith(f"record zoid {poison} ") and line.get("zoid") == poison
               for m, line in zip(said, lines))
    assert any(m.startswith("guarded mode ended") for m in said)
    assert "esindexer_crash_guard_isolated_records_total 1.0" in metrics
    assert "esindexer_crash_guard_active 0.0" in metrics  # the pass is over
    assert "esindexer_dead_letters 1.0" in metrics
    print(f"\n[crash guard] {crashes} crashes before the guarded start; its log:\n"
          + "\n".join(m for m in said if "crash" in m or "guard" in m or "clean exit" in m))

    report = _status(env)
    assert report["dead_letters_by_kind"] == {"crashed": 1} and report["dead_letters"] == 1
    assert report["crash_guard"]["last_run"] == "exited cleanly"
    assert report["crash_guard"]["unclean_exits"] == 0 and report["crash_guard"]["guard"] == "off"
    listed = json.loads(run_esindexer("dead-letters", "--json", env=env).stdout)
    assert [(g["kind"], g["letters"]) for g in listed] == [("crashed", 1)]
    text = run_esindexer("status", env=env).stdout
    assert "crashed 1" in text and "exited cleanly" in text

    # 3. The next start is normal: conversion in process, later commits indexed.
    root["late"] = late = Page("after the guarded pass")
    transaction.commit()
    normal = run_esindexer("run", "--until-caught-up", env=env)
    assert normal.returncode == 0, normal.stderr[-3000:]
    assert not any("guarded" in line["message"] or "crash" in line["message"] for line in _messages(normal.stderr))
    assert set(docs(es, alias)) == (expected | {zoid_of(late)}) - {poison}

    # 4. Redelivery converts crashed objects in a child: while the cause remains, the
    #    command survives and keeps the letter; once it is fixed, the object is indexed.
    again = run_esindexer("dead-letters", "--redeliver", "--json", env=env)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "crashed again" in json.loads(again.stdout)["failures"][str(poison)]
    assert len(dead_letters(db_dsn)) == 1
    fixed = run_esindexer("dead-letters", "--redeliver", env={**env, "ESINDEXER_TRANSFORM": ""})
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr[-3000:]
    assert dead_letters(db_dsn) == []
    assert set(docs(es, alias)) == expected | {zoid_of(late)}
    conn.close()


def test_without_rights_on_its_table_the_guard_is_off_and_says_so(db_dsn, pg_dsn, caplog):
    """The permission fallback of esindexer's other tables: no right to create the table
    (and nobody created it), or a table the role may only read: a warning, no guard; a
    table an administrator created and granted: the guard works."""
    from esindexer.observe.metrics import Metrics
    from esindexer.pipeline import crashguard
    from esindexer.source import runs
    from tests.source.follow_support import select_only_role

    owner = psycopg2.connect(db_dsn)
    with owner.cursor() as cur:
        cur.execute("CREATE TABLE object_state (zoid bigint, tid bigint, state bytea)")
    owner.commit()

    def guard_begun(dsn: str) -> bool:
        guard = crashguard.CrashGuard(load_settings(env={"ESINDEXER_PG_DSN": dsn}), Metrics(process_metrics=False),
                                      connect=lambda: psycopg2.connect(dsn))
        conn = psycopg2.connect(dsn)
        try:
            guard.ensure_table(conn)
            guard.begin(conn, -1)
            owned = guard._run_id is not None
            guard.finish()
            return owned
        finally:
            conn.close()

    with select_only_role(pg_dsn, db_dsn) as ro_dsn:
        user = psycopg2.extensions.parse_dsn(ro_dsn)["user"]
        assert not guard_begun(ro_dsn)
        assert "cannot create esindexer_crash_guard (no privilege): the crash guard is off" in caplog.text
        with owner.cursor() as cur:
            cur.execute(runs.DDL)
            cur.execute(f"GRANT SELECT ON {runs.TABLE} TO {user}")
        owner.commit()
        assert not guard_begun(ro_dsn)
        assert "cannot write esindexer_crash_guard" in caplog.text
        with owner.cursor() as cur:
            cur.execute(f"GRANT INSERT, UPDATE ON {runs.TABLE} TO {user}")
        owner.commit()
        assert guard_begun(ro_dsn)
        row = runs.read_row(owner, "esindexer")
        assert row is not None and not row.running and row.unclean_exits == 0
    owner.close()
