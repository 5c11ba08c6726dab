"""A database restored from a backup: found, reported, and the index made equal to it again.

Done as an operator does it, with real servers and tools: the service indexes a database,
``pg_dump`` takes a backup, the application changes, adds and deletes objects and packs,
the service catches up and is stopped, the database is dropped, created again and
``pg_restore``\\ d (esindexer's own tables go back with it: the saved progress is the
dump's), the service starts again and the application writes a little. The index then
holds documents of the lost transactions ("ahead" and "ghost") and lacks those the pack
deleted ("missing"). The check of the end state reads the database itself (RelStorage's
tables and ZODB), never esindexer's comparison.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest
import transaction
from BTrees.OOBTree import OOBTree
from ZODB.utils import p64

from tests.indexing import Page, progress, zoid_of
from tests.pipeline.processes import Service, caught_up, service_env
from tests.support import open_zodb, require_services, run_esindexer, wait_for

BEHIND = "database behind the index"


def pg_tool(name: str) -> str:
    """The path of ``pg_dump`` or ``pg_restore`` (``scripts/services`` installs them with the
    PostgreSQL client package); without it the test fails in CI and is skipped elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian: postgresql-client; scripts/services installs it)"
        if require_services():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def restore(admin_dsn: str, db_dsn: str, dump: Path, pg_restore: str) -> None:
    """Drop the database, create it again and ``pg_restore`` the dump into it."""
    name = urlsplit(db_dsn).path.lstrip("/")
    admin = psycopg2.connect(admin_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    admin.close()
    subprocess.run([pg_restore, "--no-owner", "--exit-on-error", f"--dbname={db_dsn}", str(dump)], check=True)


def database_objects(db_dsn: str, keep_history: bool) -> dict[int, int]:
    """``zoid -> tid`` of every current object with a state, read from RelStorage's tables."""
    sql = ("SELECT c.zoid, c.tid FROM current_object c JOIN object_state s ON s.zoid = c.zoid AND s.tid = c.tid "
           "WHERE s.state IS NOT NULL") if keep_history else \
        "SELECT zoid, tid FROM object_state WHERE state IS NOT NULL"
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        rows = {int(zoid): int(tid) for zoid, tid in cur.fetchall()}
    conn.close()
    return rows


def indexed(es, prefix: str) -> list[dict]:
    """Every document under the test's prefix (all indices), with its zoid, tid and title."""
    es.indices.refresh(index=f"{prefix}*")
    hits = es.search(index=f"{prefix}*", size=10_000, query={"match_all": {}},
                     source=["zoid", "tid", "state.title"])["hits"]["hits"]
    return [{"index": h["_index"], **h["_source"]} for h in hits]


def status(env: dict[str, str]) -> dict:
    done = run_esindexer("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_caught_up(db_dsn: str) -> None:
    wait_for(lambda: caught_up(db_dsn, ["esindexer"]), timeout=120, interval=0.3)


@pytest.mark.parametrize(("keep_history", "repair", "progress_restored"), [
    (False, "auto", True), (True, "auto", True), (False, "off", True), (True, "off", True), (False, "auto", False)],
    ids=["history-free-auto", "history-preserving-auto", "history-free-command", "history-preserving-command",
         "history-free-auto-progress-kept"])
def test_a_database_restored_from_a_dump_is_reported_and_the_index_converges(
        keep_history, repair, progress_restored, pg_dsn, db_dsn, es, es_url, es_prefix, tmp_path):
    """``repair``: the service repairs by itself (auto) or the operator runs ``verify --repair``
    (off). ``progress_restored`` False: the saved progress did not go back with the database
    (kept elsewhere, or left out of the dump), so only the documents tell."""
    pg_dump, pg_restore = pg_tool("pg_dump"), pg_tool("pg_restore")
    prefix = es_prefix.rstrip("-")
    env = service_env(db_dsn, es_url, es_prefix)
    db = open_zodb(db_dsn, keep_history)
    conn = db.open()
    conn.root()["pages"] = tree = OOBTree()
    for n in range(300):
        tree[n] = Page(f"page {n}")
    transaction.commit()
    service = Service(env, tmp_path / "before.log")
    wait_caught_up(db_dsn)

    dump = tmp_path / "backup.dump"
    subprocess.run([pg_dump, "--format=custom", f"--file={dump}", f"--dbname={db_dsn}"], check=True)

    # What the restore will lose: changes, new objects, deletions (applied by a pack).
    changed = zoid_of(tree[5])
    for n in range(100):
        tree[n].title = f"changed after the backup {n}"
    for n in range(300, 400):
        tree[n] = Page(f"added after the backup {n}")
    deleted = [zoid_of(tree[n]) for n in range(200, 250)]
    for n in range(200, 250):
        del tree[n]
    transaction.commit()
    db.pack()
    wait_caught_up(db_dsn)
    assert not {doc["zoid"] for doc in indexed(es, prefix)} & set(deleted)  # the pack's deletions applied
    assert service.stop() == 0
    assert "behind the index" not in service.log()  # never said of a database that did not go back
    conn.close()
    db.close()
    saved = progress(db_dsn)

    restore(pg_dsn, db_dsn, dump, pg_restore)
    assert progress(db_dsn) < saved  # the dump's
    if not progress_restored:
        with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
            cur.execute("UPDATE esindexer_progress SET tid = %s", (saved,))
        pg.close()

    # Found before the service runs again: status looks at the newest documents itself.
    before = status(env)
    assert before["database_behind_index"] is True and before["caught_up"] is False, before
    assert before["database_behind"]["ahead"] > 0 and not before["database_behind"]["marked"], before
    explained = run_esindexer("explain", str(changed), env=env).stdout
    assert "the index holds a newer state" in explained and "restored from a backup?" in explained, explained
    text = run_esindexer("status", env=env).stdout.splitlines()
    assert any(line.startswith("database behind") and "YES: " in line and "start the service" in line
               for line in text), text
    assert "caught up               False" in text, text

    service = Service(dict(env, ESINDEXER_REPAIR_AFTER_RESTORE=repair), tmp_path / "after.log")
    wait_for(lambda: "ERROR" in service.log() and "the database is behind the index" in service.log(), timeout=60)
    [line] = [line for line in service.log().splitlines() if "the database is behind the index" in line]
    assert "restored from a backup" in line and "ERROR" in line
    # The crash guard's row is the backup's (the service was running when it was taken): no death counted.
    assert "without a clean exit" not in service.log()

    db = open_zodb(db_dsn, keep_history)  # the application writes a little after the restore
    conn = db.open()
    tree = conn.root()["pages"]
    assert len(tree) == 300 and tree[0].title == "page 0"
    tree[1].title = "changed after the restore"
    tree[1000] = Page("added after the restore")
    transaction.commit()

    if repair == "off":
        # Reported, and nothing repaired until the operator runs the one command.
        answer = service.get("/readyz")
        assert answer is not None and answer[0] == 503 and BEHIND in answer[1], answer
        assert service.metric("esindexer_database_behind_index") == 1.0
        wait_caught_up(db_dsn)
        marked = status(env)
        assert marked["database_behind"]["marked"] is True and marked["caught_up"] is False, marked
        done = run_esindexer("verify", "--repair", env=env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "database behind the index: repaired" in done.stdout, done.stdout
        ahead = next(line for line in done.stdout.splitlines() if line.startswith("  ahead"))
        assert int(ahead.split()[1]) > 0, done.stdout

    wait_for(lambda: service.metric("esindexer_database_behind_index") == 0.0, timeout=240, interval=0.5)
    answer = service.get("/readyz")
    assert answer is not None and answer[0] == 200, answer
    assert "the database is no longer behind the index" in service.log()
    wait_caught_up(db_dsn)
    after = status(env)
    assert after["database_behind_index"] is False and after["caught_up"] is True, after

    # The index equals the database: one document per current object, at its tid, nothing else
    # (BTrees' own objects are never indexed: docs/configuration.md, ESINDEXER_CLASS_EXCLUDE).
    objects = {zoid: tid for zoid, tid in database_objects(db_dsn, keep_history).items()
               if not type(conn.get(p64(zoid))).__module__.startswith("BTrees.")}
    assert len(objects) == 302  # the root, 300 pages and the one added after the restore
    documents = indexed(es, prefix)
    assert len(documents) == len({doc["zoid"] for doc in documents})  # no copy in a second index
    held = {doc["zoid"]: doc["tid"] for doc in documents}
    ahead = sorted(z for z, tid in held.items() if z in objects and tid > objects[z])
    ghosts = sorted(set(held) - set(objects))
    missing = sorted(set(objects) - set(held))
    stale = sorted(z for z, tid in held.items() if z in objects and tid < objects[z])
    assert (ahead, ghosts, missing, stale) == ([], [], [], []), (ahead[:5], ghosts[:5], missing[:5], stale[:5])
    titles = {doc["zoid"]: doc.get("state", {}).get("title") for doc in documents}
    for key, page in tree.items():  # what the application reads through ZODB
        assert titles[zoid_of(page)] == page.title, key
    assert set(deleted) <= set(held)  # deleted after the backup, back with the restore
    explained = run_esindexer("explain", str(changed), env=env).stdout
    assert "indexed in" in explained and "at its current tid" in explained, explained
    conn.close()
    db.close()
    assert service.stop() == 0
