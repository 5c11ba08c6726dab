"""A backfill's last stretches with the object model, which the progress line reads: the
graph's resolution is timed while it runs
(``esindexer_object_graph_resolution_started_timestamp_seconds``), then the tree's documents
are counted down (``esindexer_object_documents_to_write``) from the tree's objects to 0, as
they are sent."""

from __future__ import annotations

import time

from esindexer.errors import ExitCode
from esindexer.objects.store import GraphStore
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from tests.indexing import make_settings
from tests.objects.test_model_pipeline import build, paths, truth


def watch_documents_to_write(metrics: Metrics) -> list[int]:
    """Every value ``metrics`` is given for ``esindexer_object_documents_to_write``, in order."""
    seen: list[int] = []
    record = metrics.set_object_documents_to_write

    def counted(count: int) -> None:
        seen.append(count)
        record(count)

    metrics.set_object_documents_to_write = counted  # type: ignore[method-assign]
    return seen


def test_a_backfill_counts_the_trees_documents_down_to_zero(zodb, db_dsn, es_url, es_prefix, es):
    build(zodb).close()
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")  # 25 documents a request
    metrics = Metrics(process_metrics=False)
    seen = watch_documents_to_write(metrics)
    assert Indexer(settings, metrics).run(until_caught_up=True) == ExitCode.OK
    objects = len(truth(zodb))
    assert seen[0] == objects and seen[-1] == 0 and len(seen) > objects // 25  # a step a request's worth
    assert seen == sorted(seen, reverse=True)
    assert metrics.registry.get_sample_value("esindexer_object_documents_to_write") == 0
    assert paths(es, settings.alias_name) == truth(zodb)


def test_a_backfill_says_when_its_graphs_resolution_began_while_it_runs(zodb, db_dsn, es_url, es_prefix, es,
                                                                        monkeypatch):
    build(zodb).close()
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")
    metrics = Metrics(process_metrics=False)
    gauge = "esindexer_object_graph_resolution_started_timestamp_seconds"
    during: list[float | None] = []
    resolve_all = GraphStore.resolve_all

    def watched(self: GraphStore, *args: object, **kwargs: object) -> tuple[int, int]:
        during.append(metrics.registry.get_sample_value(gauge))  # read as PostgreSQL resolves
        return resolve_all(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(GraphStore, "resolve_all", watched)
    before = time.time()
    assert Indexer(settings, metrics).run(until_caught_up=True) == ExitCode.OK
    assert len(during) == 1 and during[0] is not None and before <= during[0] <= time.time()
    assert metrics.registry.get_sample_value(gauge) is None  # absent again once resolved
