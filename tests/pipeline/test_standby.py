"""Hot standby, on the real servers with real processes: a second ``esindexer run`` with
the same client id waits (``/readyz`` 503 "standby", ``/healthz`` 200,
``esindexer_standby 1``) and takes over when the active one is killed (SIGKILL) or
loses its PostgreSQL connection, while a ZODB application keeps committing and
packing; the index then equals the database, object by object."""

from __future__ import annotations

import time

import psycopg2

from esindexer.source.pg import LOCK_CLASS
from tests.pipeline.processes import LiveWriter, Service, converge, free_port, service_env
from tests.support import run_esindexer, wait_for

TAKEOVER_LIMIT = 15.0  # seconds, the bound


def _indexing(service: Service) -> bool:
    answer = service.get("/readyz")
    return service.metric("esindexer_standby") == 0 and answer is not None and "standby" not in answer[1]


def _standing_by(service: Service) -> bool:
    readyz = service.get("/readyz")
    return (service.metric("esindexer_standby") == 1 and readyz is not None and readyz[0] == 503
            and "standby" in readyz[1])


def _assert_standby_endpoints(service: Service) -> None:
    readyz, healthz = service.get("/readyz"), service.get("/healthz")
    assert readyz is not None and readyz[0] == 503 and readyz[1].startswith("standby"), readyz
    assert healthz == (200, "ok\n")
    assert service.metric("esindexer_standby") == 1


def test_standby_takes_over_from_a_killed_active_under_a_live_writer(zodb, db_dsn, es_url, es, es_prefix, tmp_path):
    writer = LiveWriter(zodb, rate=20).start()
    env = service_env(db_dsn, es_url, es_prefix)
    active = Service(env, tmp_path / "active.log")
    standby = None
    try:
        wait_for(lambda: _indexing(active), timeout=60, interval=0.2)
        standby = Service(env, tmp_path / "standby.log")
        wait_for(lambda: _standing_by(standby), timeout=30, interval=0.2)
        _assert_standby_endpoints(standby)
        time.sleep(2)  # the standby stays a standby while the active one indexes
        _assert_standby_endpoints(standby)
        assert standby.log().count("standing by") == 1, standby.log()
        writer.pack()  # deletions captured while the active one runs ...

        killed = time.monotonic()
        active.kill()
        wait_for(lambda: _indexing(standby), timeout=30, interval=0.1)
        took = time.monotonic() - killed
        assert took <= TAKEOVER_LIMIT, f"standby took {took:.1f}s to take over"
        assert "taking over client id 'esindexer'" in standby.log()

        time.sleep(3)
        writer.pack()  # ... and after the takeover
        time.sleep(2)
        writer.stop()
        assert writer.commits > 50 and writer.packs == 2
        report = converge(db_dsn, es_url, es_prefix, ["esindexer"])
        assert report.clean, report.as_dict()
        assert report.objects > 200
        print(f"takeover after SIGKILL: {took:.2f}s; {writer.commits} commits, {report.objects} objects")
    finally:
        writer.stop(check=False)
        active.stop()
        code = standby.stop() if standby is not None else 0
        assert code == 0, standby.log() if standby else ""


def test_active_that_loses_postgresql_becomes_the_standby(zodb, db_dsn, es_url, es, es_prefix, tmp_path):
    writer = LiveWriter(zodb, rate=10, remove_every=0).start()
    env = service_env(db_dsn, es_url, es_prefix)
    first = Service(env, tmp_path / "first.log")
    second = None
    try:
        wait_for(lambda: _indexing(first), timeout=60, interval=0.2)
        second = Service(env, tmp_path / "second.log")
        wait_for(lambda: _standing_by(second), timeout=30, interval=0.2)
        # Cut the active one's session that holds the lock (its writer connection).
        with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(l.pid) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                        "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() "
                        # the client lock only: not the standby's announcement, nor RelStorage's
                        # own advisory locks, which the writer holds while it commits
                        "AND l.classid = %s::oid AND l.objsubid = 2", (LOCK_CLASS,))
            assert cur.rowcount == 1
        conn.close()
        cut = time.monotonic()
        wait_for(lambda: _indexing(second), timeout=30, interval=0.1)
        took = time.monotonic() - cut
        assert took <= TAKEOVER_LIMIT
        # The first one reconnects, finds the lock taken and stands by in turn.
        wait_for(lambda: _standing_by(first), timeout=30, interval=0.2)
        writer.stop()
        report = converge(db_dsn, es_url, es_prefix, ["esindexer"])
        assert report.clean, report.as_dict()
        print(f"takeover after a lost connection: {took:.2f}s")
    finally:
        writer.stop(check=False)
        codes = [first.stop(), second.stop() if second is not None else 0]  # both, before any assertion
        assert codes == [0, 0], first.log()[-3000:] + (second.log()[-3000:] if second else "")


def test_without_standby_a_second_instance_exits_4_before_binding_its_port(zodb, db_dsn, es_url, es, es_prefix,
                                                                          tmp_path):
    LiveWriter(zodb, rate=1)  # the schema and a few objects
    env = service_env(db_dsn, es_url, es_prefix)
    active = Service(env, tmp_path / "active.log")
    try:
        wait_for(lambda: _indexing(active), timeout=60, interval=0.2)
        # Same metrics port as the active one: had it bound the port first, it would fail
        # with exit 2 (port in use) instead of saying the client id is taken.
        second = run_esindexer("run", env={**env, "ESINDEXER_STANDBY": "false",
                                            "ESINDEXER_METRICS_PORT": str(active.port)}, timeout=60)
        assert second.returncode == 4, second.stderr
        assert "another esindexer with client id 'esindexer' is running" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        active.stop()


def test_a_metrics_port_in_use_is_one_line_and_exit_2(zodb, db_dsn, es_url, es, es_prefix):
    LiveWriter(zodb, rate=1)
    port = free_port()
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        env = service_env(db_dsn, es_url, es_prefix, metrics_port=str(port))
        result = run_esindexer("run", env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == (f"esindexer: metrics port 127.0.0.1:{port} is already in use (another esindexer on "
                         "this host?): choose another with ESINDEXER_METRICS_PORT, or 0 to turn the metrics "
                         "server off"), result.stderr
    assert "Traceback" not in result.stderr


def test_a_stopped_standby_says_it_stopped_standing_by(zodb, db_dsn, es_url, es, es_prefix, tmp_path):
    """Issue 26.7: stopping a standby logged "abandoned work in progress"; it had none."""
    zodb.open().close()
    env = service_env(db_dsn, es_url, es_prefix)
    active = Service(env, tmp_path / "active.log")
    standby = None
    try:
        wait_for(lambda: (r := active.get("/readyz")) is not None and r[0] == 200, timeout=60, interval=0.2)
        standby = Service(env, tmp_path / "standby.log")
        wait_for(lambda: _standing_by(standby), timeout=30, interval=0.2)
        assert standby.stop() == 0, standby.log()
        assert "stopped while standing by" in standby.log() and "abandoned work" not in standby.log(), standby.log()
    finally:
        for service in (standby, active):
            if service is not None:
                service.stop()
