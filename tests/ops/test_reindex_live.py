"""``esindexer reindex --to`` under an application that never stops committing, with the real
service indexing the live generation, users searching the alias every half second, and the
operator restarting the service when the command says so (issue 21).

What must hold: the command publishes (a generation followed live reaches the tid read just
before the switch), searches through the alias never lose a document nor find one twice at
the switch, the commits made between the switch and the restart reach the published
generation (the command follows it until the restarted service stands by, then hands over),
and in the end the alias holds exactly the database's objects, read through ZODB itself."""

from __future__ import annotations

import time

import pytest
import transaction
from BTrees.OOBTree import OOBTree
from ZODB.utils import u64

from tests.indexing import Page
from tests.ops.reindexing import AliasPoller, ReindexProcess
from tests.pipeline.processes import LiveWriter, Service, caught_up, service_env
from tests.support import wait_for

RATE = 8.0  # commits per second, the issue's
PAGES = 2000  # at the start


def _served(es, alias: str) -> int:
    """Documents a search through the alias finds; 0 while it does not answer yet."""
    from elasticsearch import ApiError

    try:
        return int(es.count(index=alias)["count"]) if es.indices.exists_alias(name=alias) else 0
    except ApiError:  # the index was just created and its shard is not started yet
        return 0


def _alias_documents(es, alias: str) -> dict[int, tuple[str, int]]:
    """``zoid -> (class, tid)`` of every document a search through the alias finds."""
    es.indices.refresh(index=alias)
    hits = es.search(index=alias, size=10000, query={"match_all": {}}, source=["class", "tid"])["hits"]["hits"]
    return {int(h["_id"]): (h["_source"]["class"], int(h["_source"]["tid"])) for h in hits}


def _database_pages(db) -> dict[int, int]:
    """``zoid -> tid`` of every page the application can reach, read through ZODB."""
    conn = db.open()
    try:
        found = {}
        for page in conn.root()["pages"].values():
            page._p_activate()  # a ghost's serial is not loaded yet
            found[u64(page._p_oid)] = u64(page._p_serial)
        return found
    finally:
        conn.close()


@pytest.mark.parametrize("restart_as", ["one process", "two partitions"])
def test_reindex_publishes_and_hands_over_under_a_live_writer(zodb, db_dsn, es, es_url, es_prefix, tmp_path,
                                                              restart_as):
    alias = es_prefix.rstrip("-")
    gen1 = service_env(db_dsn, es_url, es_prefix, index_prefix=f"{alias}-gen1", client_id="esindexer-gen1",
                       alias=alias)
    gen2 = {**gen1, "ESINDEXER_INDEX_PREFIX": f"{alias}-gen2", "ESINDEXER_CLIENT_ID": f"{alias}-gen2"}
    conn = zodb.open()
    conn.root()["pages"] = OOBTree({n: Page(f"page {n}", body="x" * 200) for n in range(PAGES)})
    transaction.commit()
    conn.close()
    writer = LiveWriter(zodb, rate=RATE, remove_every=0)  # one more page and one changed per commit
    service = Service(gen1, tmp_path / "gen1.log")
    poller = job = None
    services: list[Service] = []
    try:
        writer.start()
        wait_for(lambda: _served(es, alias) > PAGES, timeout=60, interval=0.2, message="the live generation served")
        poller = AliasPoller(es_url, alias).start()
        started = time.monotonic()
        job = ReindexProcess(gen1, "--to", f"{alias}-gen2", "--delete-old")
        job.wait_line("next: restart the service", timeout=120)
        published = time.monotonic() - started
        assert sorted(es.indices.get_alias(name=alias)) == [f"{alias}-gen2-objects"]
        commits_at_switch = writer.commits
        time.sleep(3)  # commits between the switch and the restart: the command follows gen2 meanwhile

        service.stop()  # the operator restarts the service on the new generation
        if restart_as == "one process":  # it stands by for the client id the command holds
            services = [Service(gen2, tmp_path / "gen2.log")]
            workers = [f"{alias}-gen2"]
        else:  # each partition seeds itself from the command's progress
            services = [Service({**gen2, "ESINDEXER_PARTITION": f"{i}/2"}, tmp_path / f"gen2-{i}.log")
                        for i in range(2)]
            workers = [f"{alias}-gen2.partition-{i}-of-2" for i in range(2)]
        code, out, err = job.finish(timeout=90)
        assert code == 0, out + err
        assert "handed over: the service took client id" in out, out
        assert f"deleted the old generation: {alias}-gen1-objects" in out, out
        if restart_as == "one process":
            assert "taking over client id" in services[0].log()
        else:
            assert f"(as {', '.join(workers)})" in out, out

        time.sleep(3)  # and after the handover
        writer.stop()
        assert writer.commits - commits_at_switch > 40
        wait_for(lambda: caught_up(db_dsn, workers), timeout=60, interval=0.5)
        time.sleep(1.5)  # a few more searches of the settled alias
        samples = poller.stop()
        assert not poller.errors, poller.errors

        switch = next(i for i, s in enumerate(samples) if s.indices == [f"{alias}-gen2-objects"])
        around = samples[max(0, switch - 4):switch + 4]
        # No search found an object twice, or two generations, or lost documents at any moment.
        assert all(s.total == s.distinct and len(s.indices) == 1 for s in samples), around
        drops = [(a, b) for a, b in zip(samples, samples[1:]) if b.total < a.total]
        assert not drops, (drops, around)

        # The alias holds exactly the database's objects: the pages ZODB reaches, at their tids.
        indexed = _alias_documents(es, alias)
        pages = {zoid: tid for zoid, (cls, tid) in indexed.items() if cls == "tests.indexing.Page"}
        assert pages == _database_pages(zodb)
        assert set(indexed) - set(pages) == {0}  # and the root, nothing else
        assert not es.indices.exists(index=f"{alias}-gen1-objects")
        print(f"published {published:.1f}s after start; {len(samples)} searches, switch at "
              f"{samples[switch].at}s: {[(s.at, s.total) for s in around]}; {writer.commits} commits, "
              f"{len(pages)} pages\n{out}")
    finally:
        writer.stop(check=False)
        if poller is not None:
            poller.stop()
        if job is not None and job.proc.poll() is None:
            job.proc.kill()
        codes = [(s.stop(), s.log()[-3000:]) for s in [service, *services]]  # every one, before asserting
        assert all(code == 0 for code, _ in codes), codes
