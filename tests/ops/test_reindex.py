"""``esindexer reindex``: build beside the live generation, verify, publish; resumable."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import psycopg2
import transaction

from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from esindexer.source import pg as source_pg
from esindexer.source import runs
from tests.indexing import Page, commit_pages, commit_tree, docs, make_settings, progress, zoid_of
from tests.ops.reindexing import ReindexProcess
from tests.pipeline.processes import Service, service_env
from tests.support import TcpProxy, esindexer_env, run_esindexer, scalar, wait_for


def _live(db_dsn, es_url, es_prefix):
    """gen1, built and published the ordinary way, as the running service would have it."""
    alias = es_prefix.rstrip("-")
    settings = make_settings(db_dsn, es_url, es_prefix, index_prefix=f"{alias}-gen1", alias=alias,
                             client_id="esindexer-gen1")
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    env = {"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_INDEX_PREFIX": f"{alias}-gen1",
           "ESINDEXER_ALIAS": alias, "ESINDEXER_CLIENT_ID": "esindexer-gen1", "ESINDEXER_INDEX_REPLICAS": "0",
           "ESINDEXER_METRICS_PORT": "0"}
    return settings, alias, env


def _aliased(es, alias):
    return sorted(es.indices.get_alias(name=alias))


def _index_settings(es, index):
    return es.indices.get_settings(index=index)[index]["settings"]["index"]


def test_reindex_builds_verifies_and_publishes(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    commit_pages(conn.root(), 20)
    settings, alias, env = _live(db_dsn, es_url, es_prefix)
    done = run_esindexer("reindex", "--to", f"{alias}-gen2", env={**env, "ESINDEXER_STATE_MAPPING": "dynamic"},
                         timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"alias {alias}: {alias}-gen1-objects -> {alias}-gen2-objects (21 documents; caught up with the commit of" in done.stdout
    assert "verified: 21 objects, 21 documents, no difference" in done.stdout
    assert "reindex finished: 21 rows in" in done.stderr  # the progress summary of the build
    assert f"ESINDEXER_INDEX_PREFIX={alias}-gen2 ESINDEXER_CLIENT_ID={alias}-gen2" in done.stdout
    assert _aliased(es, alias) == [f"{alias}-gen2-objects"]
    assert len(docs(es, alias)) == 21
    index = _index_settings(es, f"{alias}-gen2-objects")
    assert index.get("refresh_interval") in (None, "1s") and index["number_of_replicas"] == "0"
    mapping = es.indices.get_mapping(index=alias)[f"{alias}-gen2-objects"]["mappings"]
    assert mapping["_meta"]["state_mapping"] == "dynamic"
    assert es.indices.exists(index=f"{alias}-gen1-objects")  # kept by default
    conn.close()


def test_an_interrupted_reindex_exits_130_publishes_nothing_and_resumes(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    # a build of seconds: with 3,000 pages it took 0.3 s once, and ended before the
    # interrupt that was to land in it (the pause then failed the publication instead)
    commit_tree(conn.root(), 20_000)
    settings, alias, env = _live(db_dsn, es_url, es_prefix)
    es.indices.refresh(index=alias)
    live_documents = es.count(index=alias)["count"]  # what the live generation holds
    target = urlsplit(es_url)
    proxy = TcpProxy(target.hostname, target.port)
    env = {**env, "ESINDEXER_ES_URL": proxy.url, "ESINDEXER_BATCH_LIMIT": "300", "ESINDEXER_SHUTDOWN_TIMEOUT": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "esindexer", "reindex", "--to", f"{alias}-gen2"],
                            env=esindexer_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: progress(db_dsn, f"{alias}-gen2") > 0, message="the build under way")
        proxy.pause()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proxy.resume()
    assert proc.returncode == ExitCode.INTERRUPTED, err[-3000:]
    assert "run the same command again to resume" in err
    assert _aliased(es, alias) == [f"{alias}-gen1-objects"]  # searches never saw the half-built one
    assert _index_settings(es, f"{alias}-gen2-objects")["refresh_interval"] == "-1"  # still bulk-loading

    done = run_esindexer("reindex", "--to", f"{alias}-gen2", "--delete-old", env=env, timeout=300)
    proxy.close()
    assert done.returncode == 0, done.stdout + done.stderr
    assert _aliased(es, alias) == [f"{alias}-gen2-objects"]
    assert _index_settings(es, f"{alias}-gen2-objects").get("refresh_interval") in (None, "1s")
    es.indices.refresh(index=alias)
    assert es.count(index=alias)["count"] == live_documents > 3000
    assert not es.indices.exists(index=f"{alias}-gen1-objects")
    assert progress(db_dsn, "esindexer-gen1") == -1
    assert f"deleted the old generation: {alias}-gen1-objects" in done.stdout
    conn.close()


def test_the_old_generation_is_kept_while_its_indexer_runs_and_deleted_on_a_prompt_second_run(
        zodb, db_dsn, es, es_url, es_prefix, tmp_path):
    conn = zodb.open()
    commit_pages(conn.root(), 3)
    settings, alias, env = _live(db_dsn, es_url, es_prefix)
    holder = psycopg2.connect(db_dsn)
    service = None
    try:
        source_pg.lock_client(holder, "esindexer-gen1")  # as the running service holds it
        job = ReindexProcess(env, "--to", f"{alias}-gen2", "--delete-old")
        job.wait_line("next: restart the service", timeout=120)
        # The operator starts the service on gen2 (a second host still runs gen1: the holder).
        service = Service(service_env(db_dsn, es_url, es_prefix, index_prefix=f"{alias}-gen2",
                                      client_id=f"{alias}-gen2", alias=alias), tmp_path / "gen2.log")
        code, out, err = job.finish(timeout=90)
        assert code == ExitCode.ERROR, out + err
        assert "handed over: the service took client id" in out
        assert "an indexer with client id 'esindexer-gen1' still runs" in err
        assert _aliased(es, alias) == [f"{alias}-gen2-objects"]  # published all the same
        assert es.indices.exists(index=f"{alias}-gen1-objects")
        holder.close()  # gen1's last indexer stopped
        # Run again while the service follows gen2: nothing to build, no wait for gen2's lock.
        started = time.monotonic()
        again = run_esindexer("reindex", "--to", f"{alias}-gen2", "--delete-old", env=env, timeout=60)
        took = time.monotonic() - started
        assert again.returncode == 0, again.stdout + again.stderr
        assert "nothing to build, switch or hand over" in again.stdout
        assert not es.indices.exists(index=f"{alias}-gen1-objects")
        assert took < 20, took
    finally:
        holder.close()
        if service is not None:
            assert service.stop() == 0, service.log()[-3000:]
    conn.close()


def test_interrupted_while_waiting_for_the_service_the_published_generation_is_followed_again(
        zodb, db_dsn, es, es_url, es_prefix, tmp_path):
    conn = zodb.open()
    root = conn.root()
    commit_pages(root, 3)
    settings, alias, env = _live(db_dsn, es_url, es_prefix)
    holder = psycopg2.connect(db_dsn)
    service = None
    jobs: list[ReindexProcess] = []
    handover = ("FROM pg_stat_activity WHERE application_name LIKE 'esindexer handover%%' "
                "AND datname = current_database()")
    try:
        source_pg.lock_client(holder, "esindexer-gen1")  # the service runs on gen1
        job = ReindexProcess(env, "--to", f"{alias}-gen2")
        jobs.append(job)
        job.wait_line("next: restart the service", timeout=120)
        # The handover's session opens just after that line: under load, a moment later.
        wait_for(lambda: scalar(db_dsn, f"SELECT count(*) {handover}") == 1, timeout=30,
                 message="the handover's session")
        cut = scalar(db_dsn, f"SELECT count(pg_terminate_backend(pid)) {handover}")
        assert cut == 1
        time.sleep(2)
        assert job.proc.poll() is None, job.err  # a lost connection while waiting ends nothing
        job.proc.send_signal(signal.SIGTERM)
        code, out, err = job.finish(timeout=60)
        assert code == ExitCode.TERMINATED, out + err
        assert f"{alias}-gen2 is published but not handed over (interrupted)" in err
        assert _aliased(es, alias) == [f"{alias}-gen2-objects"]

        root["late"] = late = Page("committed while nobody follows gen2")
        transaction.commit()
        again = ReindexProcess(env, "--to", f"{alias}-gen2")
        jobs.append(again)
        again.wait_line(f"{alias}-gen2 is already published", timeout=60)
        wait_for(lambda: zoid_of(late) in docs(es, alias), timeout=30, message="the late commit served")
        template = es.indices.get_index_template(name=f"{alias}-gen2-esindexer")["index_templates"][0]
        assert alias in template["index_template"]["template"]["aliases"]  # the follower kept it attached
        service = Service(service_env(db_dsn, es_url, es_prefix, index_prefix=f"{alias}-gen2",
                                      client_id=f"{alias}-gen2", alias=alias), tmp_path / "gen2.log")
        code, out, err = again.finish(timeout=90)
        assert code == 0, out + err
        assert "handed over: the service took client id" in out
    finally:
        holder.close()
        for running in jobs:  # a failed assertion must not leave a job following for ever
            if running.proc.poll() is None:
                running.proc.kill()
                running.proc.wait(10)
        if service is not None:
            assert service.stop() == 0, service.log()[-3000:]
    conn.close()


def test_a_standby_that_does_not_take_over_leaves_no_gap(zodb, db_dsn, es, es_url, es_prefix, tmp_path):
    conn = zodb.open()
    root = conn.root()
    commit_pages(root, 3)
    settings, alias, env = _live(db_dsn, es_url, es_prefix)
    holder, ghost = psycopg2.connect(db_dsn), psycopg2.connect(db_dsn)
    service = None
    try:
        source_pg.lock_client(holder, "esindexer-gen1")  # the service runs on gen1
        runs.announce_standby(ghost, f"{alias}-gen2")  # says it stands by, never takes the lock
        job = ReindexProcess(env, "--to", f"{alias}-gen2")
        job.wait_line("did not take over within", timeout=120)
        job.wait_line(f"following {alias}-gen2 again", timeout=10)
        ghost.close()
        root["late"] = late = Page("committed after the standby went away")
        transaction.commit()
        wait_for(lambda: zoid_of(late) in docs(es, alias), timeout=30, message="the late commit served")
        service = Service(service_env(db_dsn, es_url, es_prefix, index_prefix=f"{alias}-gen2",
                                      client_id=f"{alias}-gen2", alias=alias), tmp_path / "gen2.log")
        code, out, err = job.finish(timeout=90)
        assert code == 0, out + err
        assert "handed over: the service took client id" in out
    finally:
        holder.close()
        ghost.close()
        if service is not None:
            assert service.stop() == 0, service.log()[-3000:]
    conn.close()


def test_the_command_never_stands_by_for_the_new_client_id(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    commit_pages(conn.root(), 3)
    settings, alias, env = _live(db_dsn, es_url, es_prefix)
    holder = psycopg2.connect(db_dsn)
    try:
        source_pg.lock_client(holder, f"{alias}-gen2")  # another process on the new generation
        done = run_esindexer("reindex", "--to", f"{alias}-gen2", env=env, timeout=60)  # it used to wait for ever
    finally:
        holder.close()
    assert done.returncode == ExitCode.LOCKED, done.stdout + done.stderr
    assert f"another indexer runs with client id '{alias}-gen2' (the new generation's)" in done.stderr
    assert _aliased(es, alias) == [f"{alias}-gen1-objects"]
    conn.close()


def test_the_live_prefix_is_refused_as_the_new_one(db_dsn, es_url, es_prefix):
    alias = es_prefix.rstrip("-")
    done = run_esindexer("reindex", "--to", alias, env={"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url,
                                                        "ESINDEXER_INDEX_PREFIX": alias})
    assert done.returncode == ExitCode.SETUP and "must differ" in done.stderr
