"""``esindexer alias`` refuses to publish what is not built, and says what it moved."""

from __future__ import annotations

import transaction

from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from tests.indexing import Page, commit_pages, make_settings
from tests.support import run_esindexer


def _build(db_dsn, es_url, es_prefix, generation: str, **overrides):
    alias = es_prefix.rstrip("-")
    settings = make_settings(db_dsn, es_url, es_prefix, index_prefix=f"{alias}-{generation}", alias=alias,
                             client_id=f"esindexer-{generation}", **overrides)
    assert Indexer(settings, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK
    return settings


def _alias_cmd(db_dsn, es_url, alias, generation, *extra):
    return run_esindexer("alias", *extra, env={
        "ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_ALIAS": alias,
        "ESINDEXER_INDEX_PREFIX": f"{alias}-{generation}", "ESINDEXER_CLIENT_ID": f"esindexer-{generation}"})


def _aliased(es, alias):
    return sorted(es.indices.get_alias(name=alias)) if es.indices.exists_alias(name=alias) else []


def test_a_mistyped_prefix_is_refused_and_creates_nothing(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    commit_pages(conn.root(), 5)
    alias = es_prefix.rstrip("-")
    _build(db_dsn, es_url, es_prefix, "gen1")
    done = _alias_cmd(db_dsn, es_url, alias, "gne2")
    assert done.returncode == ExitCode.ERROR, done.stderr
    assert f"{alias}-gne2-objects does not exist" in done.stderr and "alias is unchanged" in done.stderr
    assert _aliased(es, alias) == [f"{alias}-gen1-objects"]
    assert not es.indices.exists(index=f"{alias}-gne2-objects")
    conn.close()


def test_an_empty_or_behind_generation_is_refused_until_forced(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    root = conn.root()
    commit_pages(root, 5)
    alias = es_prefix.rstrip("-")
    _build(db_dsn, es_url, es_prefix, "gen1")
    gen2 = _build(db_dsn, es_url, es_prefix, "gen2", attach_alias="false")

    root["late"] = Page("committed after gen2 was built")  # gen2 is now behind
    transaction.commit()
    behind = _alias_cmd(db_dsn, es_url, alias, "gen2")
    assert behind.returncode == ExitCode.ERROR
    assert "'esindexer-gen2' is behind the database" in behind.stderr
    assert _aliased(es, alias) == [f"{alias}-gen1-objects"]

    es.indices.delete(index=f"{alias}-gen2-objects")
    es.indices.create(index=f"{alias}-gen2-objects")  # exists, from the template, and is empty
    assert Indexer(gen2, Metrics(process_metrics=False)).run(until_caught_up=True) == ExitCode.OK  # catch up
    es.indices.delete(index=f"{alias}-gen2-objects")
    es.indices.create(index=f"{alias}-gen2-objects")
    empty = _alias_cmd(db_dsn, es_url, alias, "gen2")
    assert empty.returncode == ExitCode.ERROR
    assert "hold no document" in empty.stderr
    assert _aliased(es, alias) == [f"{alias}-gen1-objects"]

    forced = _alias_cmd(db_dsn, es_url, alias, "gen2", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "switching anyway (--force)" in forced.stderr
    assert _aliased(es, alias) == [f"{alias}-gen2-objects"]
    conn.close()


def test_a_ready_generation_switches_and_says_from_where_to_where(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    commit_pages(conn.root(), 5)
    alias = es_prefix.rstrip("-")
    _build(db_dsn, es_url, es_prefix, "gen1")
    _build(db_dsn, es_url, es_prefix, "gen2", attach_alias="false")
    done = _alias_cmd(db_dsn, es_url, alias, "gen2")
    assert done.returncode == 0, done.stderr
    assert f"alias {alias}: {alias}-gen1-objects -> {alias}-gen2-objects (6 documents)" in done.stdout
    assert f"removed from {alias}-gen1-objects" in done.stdout and f"added to {alias}-gen2-objects" in done.stdout
    assert _aliased(es, alias) == [f"{alias}-gen2-objects"]
    again = _alias_cmd(db_dsn, es_url, alias, "gen2")
    assert again.returncode == 0 and "already there: nothing to change" in again.stdout
    conn.close()


def test_a_generation_built_by_partitions_is_published_once_every_partition_is_caught_up(
        zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    root = conn.root()
    commit_pages(root, 10)
    alias = es_prefix.rstrip("-")
    _build(db_dsn, es_url, es_prefix, "gen1")
    _build(db_dsn, es_url, es_prefix, "gen2", attach_alias="false", partition="0/2")
    half = _alias_cmd(db_dsn, es_url, alias, "gen2")  # partition 1/2 has not run: not the whole database
    assert half.returncode == ExitCode.ERROR and "has no saved progress" in half.stderr, half.stderr
    _build(db_dsn, es_url, es_prefix, "gen2", attach_alias="false", partition="1/2")
    done = _alias_cmd(db_dsn, es_url, alias, "gen2")
    assert done.returncode == 0, done.stderr
    assert _aliased(es, alias) == [f"{alias}-gen2-objects"]
    conn.close()


def _env(db_dsn, es_url, alias, generation):
    return {"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_ALIAS": alias,
            "ESINDEXER_INDEX_PREFIX": f"{alias}-{generation}", "ESINDEXER_CLIENT_ID": f"esindexer-{generation}",
            "ESINDEXER_INDEX_REPLICAS": "0", "ESINDEXER_METRICS_PORT": "0"}


def test_an_alias_never_serves_two_generations_silently(zodb, db_dsn, es, es_url, es_prefix):
    conn = zodb.open()
    commit_pages(conn.root(), 5)
    alias = es_prefix.rstrip("-")
    _build(db_dsn, es_url, es_prefix, "gen1")
    _build(db_dsn, es_url, es_prefix, "gen2", attach_alias="false")
    gen1, gen2 = (_env(db_dsn, es_url, alias, g) for g in ("gen1", "gen2"))

    # A service started on the generation that was never published (default settings) ...
    refused = run_esindexer("run", "--until-caught-up", env=gen2, timeout=60)
    assert refused.returncode == ExitCode.SETUP, refused.stderr
    assert (f"the alias {alias} serves {alias}-gen1-objects, indices of another generation: putting "
            f"{alias}-gen2-objects (ESINDEXER_INDEX_PREFIX={alias}-gen2) next to them") in refused.stderr
    assert _aliased(es, alias) == [f"{alias}-gen1-objects"]  # ... leaves the alias alone
    assert run_esindexer("run", "--until-caught-up", env={**gen2, "ESINDEXER_ATTACH_ALIAS": "false"},
                         timeout=60).returncode == 0  # followed without being served: allowed

    # Both behind the alias (by hand): status says so from either generation.
    es.indices.put_alias(index=f"{alias}-gen2-objects", name=alias)
    for env, this, other in ((gen2, "gen2", "gen1"), (gen1, "gen1", "gen2")):
        status = run_esindexer("status", env=env, timeout=60)
        assert status.returncode == 0, status.stderr
        warning = next(line for line in status.stdout.splitlines() if line.startswith("alias warning"))
        assert warning.split(None, 2)[2].startswith(
            f"the alias serves two generations: {alias}-{this}-objects (this one) and {alias}-{other}-objects; "
            "every search finds each object twice"), status.stdout
    assert run_esindexer("run", "--until-caught-up", env=gen1, timeout=60).returncode == ExitCode.SETUP

    # Published the checked way, the new generation's service starts; the old one's is refused.
    assert _alias_cmd(db_dsn, es_url, alias, "gen2").returncode == 0
    assert _aliased(es, alias) == [f"{alias}-gen2-objects"]
    es.indices.create(index=f"{alias}-gen1-recreated")  # as Elasticsearch does for an old service's write
    assert _aliased(es, alias) == [f"{alias}-gen2-objects"]  # gen1's template no longer names the alias
    assert run_esindexer("run", "--until-caught-up", env=gen2, timeout=60).returncode == 0
    old = run_esindexer("run", "--until-caught-up", env=gen1, timeout=60)
    assert old.returncode == ExitCode.SETUP and f"serves {alias}-gen2-objects" in old.stderr
    assert _aliased(es, alias) == [f"{alias}-gen2-objects"]
    status = run_esindexer("status", env=gen1, timeout=60)
    assert f"the alias serves {alias}-gen2-objects, not this generation's indices" in status.stdout
    assert "alias warning" not in run_esindexer("status", env=gen2, timeout=60).stdout
    conn.close()
