"""``esindexer reindex``: a new generation built beside the live one, checked, then published.

The steps, each safe to repeat, so that running the same command again after a crash or
an interruption resumes where it stopped (progress of the new client id is kept in
PostgreSQL like any indexer's):

1. **build**: index the whole database into ``<new prefix>-<route>`` under the new
   client id, detached from the alias, with bulk-load index settings (no refresh, no
   replicas);
2. **settle**: put the configured refresh interval and replicas back on those indices
   and their template (done on every run, so a crash between 1 and 2 leaves nothing
   behind once the command is run again), and catch up with what was committed meanwhile;
3. **verify**: compare the new generation with the database; differences are repaired
   once and must then be gone;
4. **publish**: switch the alias after the checks of :mod:`esindexer.ops.publish`
   (indices exist, not empty, caught up); searches through the alias never see the new
   generation before this point;
5. **old generation**: kept, or deleted with ``delete_old`` (only once no indexer with
   the old client id runs: it would re-create what was deleted).

The live service must then be restarted with the new prefix and client id; the command
says so, with the values.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from esindexer.config import Settings
from esindexer.errors import ExitCode

if TYPE_CHECKING:
    from esindexer.pipeline.indexer import Indexer

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What the command did, each item re-read from the servers before it is reported."""

    code: ExitCode = ExitCode.OK
    published: bool = False  #: the alias was read back pointing at the new generation
    steps: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def generation(settings: Settings, prefix: str, client_id: str | None) -> tuple[Settings, Settings]:
    """The new generation's settings while building (bulk load) and once published."""
    final = dataclasses.replace(settings, index_prefix=prefix, client_id=client_id or prefix,
                                alias=settings.alias_name, attach_alias=False)
    build = dataclasses.replace(final, index_refresh_interval="-1", index_replicas=0, live_refresh_interval=0.0)
    return build, final


class Reindex:
    """One run of the command; :meth:`stop` (from a signal handler) interrupts the build."""

    def __init__(self, settings: Settings, prefix: str, client_id: str | None = None, *,
                 delete_old: bool = False):
        if prefix == settings.index_prefix:
            raise ValueError(f"the new prefix must differ from the live one ({prefix!r})")
        self.live = settings
        self.build_settings, self.final = generation(settings, prefix, client_id)
        self.delete_old = delete_old
        self._indexer: Indexer | None = None
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True
        if self._indexer is not None:
            self._indexer.stop()

    def _index(self, settings: Settings) -> ExitCode:
        """Run an indexer until caught up; anything but a complete catch-up is returned."""
        from esindexer.observe.metrics import Metrics
        from esindexer.observe.progress import backlog_reporter
        from esindexer.pipeline.indexer import Indexer

        if self._stopped:
            return ExitCode.INTERRUPTED
        metrics = Metrics(process_metrics=False)
        self._indexer = indexer = Indexer(settings, metrics)
        # rows done/left, rate and ETA while it builds; a summary line at the end
        reporter = backlog_reporter(settings, metrics, until_caught_up=True, what="reindex")
        try:
            code = indexer.run(until_caught_up=True)
        finally:
            self._indexer = None
            if reporter is not None:
                reporter.close(ended="finished" if indexer.caught_up else "stopped")
        if code == ExitCode.OK and not indexer.caught_up:
            return ExitCode.INTERRUPTED
        return code

    def run(self, conn: Any, es: Any) -> Outcome:
        out = Outcome()
        new = self.final
        log.info("building %s (client id %s) from the database", new.index_prefix, new.client_id)
        if (code := self._index(self.build_settings)) != ExitCode.OK:
            out.code = code
            out.problems.append("the build did not finish; run the same command again to resume")
            return out
        out.steps.append(f"built {', '.join(new.routed_indices)} (client id {new.client_id})")
        self._settle(es)
        out.steps.append(f"restored refresh interval {new.index_refresh_interval or 'default'} and "
                         f"{new.index_replicas} replica(s)")
        if (code := self._index(new)) != ExitCode.OK:
            out.code = code
            out.problems.append("catching up after the build did not finish; run the same command again")
            return out
        if not self._verified(conn, out):
            out.code = ExitCode.ERROR
            return out
        if not self._publish(conn, es, out):
            out.code = ExitCode.ERROR
            return out
        if self.delete_old:
            self._delete_old(conn, es, out)
        return out

    def _settle(self, es: Any) -> None:
        """The configured refresh interval and replicas, on the indices and their template."""
        from esindexer.es.admin import index_template, template_name
        from esindexer.es.client import engine_of

        new = self.final
        es.indices.put_settings(index=",".join(new.routed_indices), settings={
            "index.refresh_interval": new.index_refresh_interval,  # None restores the default
            "index.number_of_replicas": new.index_replicas})
        es.indices.put_index_template(name=template_name(new), **index_template(new, engine_of(es)))
        es.indices.refresh(index=",".join(new.routed_indices))

    def _verified(self, conn: Any, out: Outcome) -> bool:
        from esindexer.convert.configure import build_jsonifier
        from esindexer.documents import DocumentBuilder
        from esindexer.es.sink import ElasticsearchSink
        from esindexer.ops.verify import verify

        new = self.final
        sink = ElasticsearchSink(dataclasses.replace(new, retry_attempts=new.retry_attempts or 5))
        try:
            builder, jsonifier = DocumentBuilder(new), build_jsonifier(new)
            # one walk: repairs are read back, and what still differs is counted (lag aside)
            report = verify(conn, sink, builder, jsonifier, new.client_id, repair=True)
        finally:
            conn.rollback()
            sink.es.close()
        if report.remaining:
            out.problems.append(f"verify still finds differences after a repair: {report.still} "
                                f"(zoids {report.still_examples}); the alias is unchanged")
            return False
        repaired = f" ({report.repaired} repaired and read back)" if report.repaired else ""
        out.steps.append(f"verified: {report.objects} objects, {report.documents} documents, "
                         f"no difference{repaired}")
        return True

    def _publish(self, conn: Any, es: Any, out: Outcome) -> bool:
        from esindexer.ops.publish import readiness, switch

        ready = readiness(es, conn, self.final)
        if ready.problems:
            out.problems += [f"not published: {problem}" for problem in ready.problems]
            return False
        now = switch(es, self.final)
        if sorted(now) != sorted(ready.target):
            out.problems.append(f"after the switch the alias points at {', '.join(now) or 'nothing'}")
            return False
        out.published = True
        out.steps.append(f"alias {ready.alias}: {', '.join(ready.current) or '(none)'} -> {', '.join(now)} "
                         f"({ready.documents} documents)")
        return True

    def _delete_old(self, conn: Any, es: Any, out: Outcome) -> None:
        from esindexer.es.admin import template_name
        from esindexer.source import runs

        old = self.live
        running = runs.client_running(conn, old.client_id)
        conn.rollback()
        if running:
            out.problems.append(
                f"the old generation is kept: an indexer with client id {old.client_id!r} still runs and would "
                "re-create its indices; restart it with the new prefix and client id, then run this command "
                "again with --delete-old (nothing is rebuilt)")
            out.code = ExitCode.ERROR
            return
        published = set(es.indices.get_alias(name=self.final.alias_name)) \
            if es.indices.exists_alias(name=self.final.alias_name) else set()
        doomed = [index for index in old.routed_indices
                  if index not in published and es.indices.exists(index=index)]
        if doomed:
            es.indices.delete(index=",".join(doomed), ignore_unavailable=True)
        es.options(ignore_status=404).indices.delete_index_template(name=template_name(old))
        with conn.cursor() as cur:
            for table in ("esindexer_progress", "esindexer_deletion_cursor"):
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
                if cur.fetchone()[0]:
                    cur.execute(f"DELETE FROM {table} WHERE client_id = %s", (old.client_id,))
        conn.commit()
        out.steps.append(f"deleted the old generation: {', '.join(doomed) or 'no index'}, template "
                         f"{template_name(old)}, progress of client id {old.client_id!r}")
