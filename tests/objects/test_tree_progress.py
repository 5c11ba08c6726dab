"""A backfill's last stretch with the object model, the tree's documents, is counted down
(``esindexer_object_documents_to_write``, which the progress line reads): from the tree's
objects to 0, as they are sent."""

from __future__ import annotations

from esindexer.errors import ExitCode
from esindexer.observe.metrics import Metrics
from esindexer.pipeline.indexer import Indexer
from tests.indexing import make_settings
from tests.objects.test_model_pipeline import build, paths, truth


def test_a_backfill_counts_the_trees_documents_down_to_zero(zodb, db_dsn, es_url, es_prefix, es):
    build(zodb).close()
    settings = make_settings(db_dsn, es_url, es_prefix, documents="objects")  # 25 documents a request
    metrics = Metrics(process_metrics=False)
    seen: list[int] = []
    record = metrics.set_object_documents_to_write

    def counted(count: int) -> None:
        seen.append(count)
        record(count)

    metrics.set_object_documents_to_write = counted  # type: ignore[method-assign]
    assert Indexer(settings, metrics).run(until_caught_up=True) == ExitCode.OK
    objects = len(truth(zodb))
    assert seen[0] == objects and seen[-1] == 0 and len(seen) > objects // 25  # a step a request's worth
    assert seen == sorted(seen, reverse=True)
    assert metrics.registry.get_sample_value("esindexer_object_documents_to_write") == 0
    assert paths(es, settings.alias_name) == truth(zodb)
