"""``esindexer reindex``: a new generation built beside the live one, checked, then published.

The steps, each safe to repeat, so that running the same command again after a crash or
an interruption resumes where it stopped (progress of the new client id is kept in
PostgreSQL like any indexer's):

1. **build**: index the whole database into ``<new prefix>-<route>`` under the new
   client id, detached from the alias, with bulk-load index settings (no refresh, no
   replicas);
2. **settle**: put the configured refresh interval and replicas back on those indices
   and their template (done on every run, so a crash between 1 and 2 leaves nothing
   behind once the command is run again);
3. **follow**: from here on the command indexes the new generation live
   (:mod:`esindexer.ops.handover`), so it keeps up with an application that never stops
   committing;
4. **verify**: compare the new generation with the database; differences are repaired
   once and must then be gone (what the follower has not written yet is lag, not drift);
5. **publish**: switch the alias after the checks of :mod:`esindexer.ops.publish`
   (indices exist, not empty, caught up with a tid read just before the switch);
   searches through the alias never see the new generation before this point;
6. **hand over**: keep following until the service, restarted with the new prefix and
   client id, stands by for that client id, then stop and let it take over (only when a
   service follows the live generation; with none running there is nobody to hand to);
7. **old generation**: kept, or deleted with ``delete_old`` (only once no indexer with
   the old client id runs: it would re-create what was deleted).

Run again after the service took over, the command finds the generation published and
followed, builds nothing and goes straight to step 7.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from esindexer.config import Settings
from esindexer.errors import ExitCode

if TYPE_CHECKING:
    from esindexer.ops.handover import Follower
    from esindexer.pipeline.indexer import Indexer

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What the command did, each item re-read from the servers before it is reported."""

    code: ExitCode = ExitCode.OK
    published: bool = False  #: the alias was read back pointing at the new generation
    handed_over: bool = False  #: a service took the new client id over from this command
    steps: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    say: Callable[[str], None] | None = None  #: told each step as it is done (the operator acts on some)

    def step(self, text: str) -> None:
        self.steps.append(text)
        if self.say is not None:
            self.say(text)


def generation(settings: Settings, prefix: str, client_id: str | None) -> tuple[Settings, Settings]:
    """The new generation's settings while building (bulk load) and once published. Never a
    standby: a process already holding the new client id is reported, not waited for."""
    final = dataclasses.replace(settings, index_prefix=prefix, client_id=client_id or prefix,
                                alias=settings.alias_name, attach_alias=False, standby=False)
    build = dataclasses.replace(final, index_refresh_interval="-1", index_replicas=0, live_refresh_interval=0.0)
    return build, final


class Reindex:
    """One run of the command; :meth:`stop` (from the signal thread) interrupts it."""

    def __init__(self, settings: Settings, prefix: str, client_id: str | None = None, *,
                 delete_old: bool = False):
        if prefix == settings.index_prefix:
            raise ValueError(f"the new prefix must differ from the live one ({prefix!r})")
        self.live = settings
        self.build_settings, self.final = generation(settings, prefix, client_id)
        self.delete_old = delete_old
        self._indexer: Indexer | None = None
        self._stopped = threading.Event()

    def stop(self, abandon: bool = False) -> None:
        """Stop (from the signal thread); with ``abandon``, leave in-flight requests behind."""
        self._stopped.set()
        if (indexer := self._indexer) is not None:
            indexer.stop(abandon=abandon)
            indexer.interrupt(abandon=abandon)

    def interrupt(self, abandon: bool = False) -> None:
        """After :meth:`stop`, repeatedly: cancel the statements of the indexer that the stop waits for."""
        if (indexer := self._indexer) is not None:
            indexer.interrupt(abandon=abandon)

    def _index(self, settings: Settings) -> ExitCode:
        """Run an indexer until caught up; anything but a complete catch-up is returned."""
        from esindexer.observe.metrics import Metrics
        from esindexer.observe.progress import backlog_reporter
        from esindexer.pipeline.indexer import Indexer

        if self._stopped.is_set():
            return ExitCode.INTERRUPTED
        metrics = Metrics(process_metrics=False)
        self._indexer = indexer = Indexer(settings, metrics)
        if self._stopped.is_set():  # a signal between the check above and now
            indexer.stop()
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

    def run(self, conn: Any, es: Any, say: Callable[[str], None] | None = None) -> Outcome:
        from esindexer.source import runs

        out = Outcome(say=say)
        new = self.final
        published = _aliased(es, new.alias_name) == sorted(new.routed_indices)
        if published and runs.client_running(conn, new.worker_id):
            out.step(f"{new.index_prefix} is already published (alias {new.alias_name}) and an indexer with client "
                     f"id {new.client_id!r} follows it: nothing to build, switch or hand over")
        else:
            if not published and not self._build(es, out):
                return out
            if not self._follow(conn, es, out, published):
                return out
        if self.delete_old:
            self._delete_old(conn, es, out)
        return out

    def _build(self, es: Any, out: Outcome) -> bool:
        new = self.final
        log.info("building %s (client id %s) from the database", new.index_prefix, new.client_id)
        if (code := self._index(self.build_settings)) != ExitCode.OK:
            out.code = code
            out.problems.append(_locked(new) if code == ExitCode.LOCKED else
                                "the build did not finish; run the same command again to resume")
            return False
        out.step(f"built {', '.join(new.routed_indices)} (client id {new.client_id})")
        self._settle(es)
        out.step(f"restored refresh interval {new.index_refresh_interval or 'default'} and "
                 f"{new.index_replicas} replica(s)")
        return True

    def _follow(self, conn: Any, es: Any, out: Outcome, published: bool) -> bool:
        """Follow the new generation live through verify and publish, then hand it over."""
        from esindexer.errors import Abandoned, AlreadyRunning
        from esindexer.ops.handover import Follower, Handover, describe, hand_over, running_workers, wait_caught_up
        from esindexer.source import runs

        new = self.final
        # Published already (a second run): its template keeps naming the alias as the switch left it.
        follower = self._indexer_of(Follower(dataclasses.replace(new, attach_alias=True) if published else new))
        try:
            follower.start()
        except AlreadyRunning:
            self._indexer = None
            out.code = ExitCode.LOCKED
            out.problems.append(_locked(new))
            return False
        except Abandoned:
            self._indexer = None
            out.code = ExitCode.INTERRUPTED
            out.problems.append("interrupted; run the same command again to resume")
            return False
        try:
            caught = wait_caught_up(conn, follower, self._stopped)
            if caught is None:
                out.code = ExitCode.INTERRUPTED if self._stopped.is_set() else ExitCode.ERROR
                out.problems.append("following the new generation ended before it caught up "
                                    f"({describe(follower)}); run the same command again to resume")
                return False
            out.step(f"following {new.index_prefix} live (client id {new.client_id}): caught up with the commit "
                      f"of {_when(caught)} in {time.monotonic() - follower.started:.1f}s")
            if not published:
                verified = self._verified(conn, out)
                if self._stopped.is_set():  # never publish after Ctrl-C
                    out.code = ExitCode.INTERRUPTED
                    out.problems.append("interrupted before the switch; run the same command again to resume")
                    return False
                if not (verified and self._publish(conn, es, out)):
                    out.code = ExitCode.ERROR
                    return False
            if published:
                out.step(f"{new.index_prefix} is already published (alias {new.alias_name})")
            if not follower.alive:
                out.code = ExitCode.ERROR
                out.problems.append(f"{new.index_prefix} is published but no longer followed ({describe(follower)})"
                                    f"; {_restart(new)} now")
                return False
            # A service follows the live generation, or already waits for the new one: hand over to it.
            if not (running_workers(conn, self.live.client_id) or runs.standby_waiting(conn, new.worker_id)):
                out.step(f"next: start the service with {_service_env(new)} (no indexer runs with client id "
                         f"{self.live.client_id!r}, so none is waiting to take {new.index_prefix} over; it resumes "
                         "from its own progress)")
                return True
            out.step(f"next: restart the service with {_service_env(new)}; this command follows "
                     f"{new.index_prefix} until that service stands by for client id {new.client_id!r}, then hands "
                     "over to it")
            done = hand_over(follower, self._stopped.is_set, self._stopped.wait)
            while done.unclaimed and not self._stopped.is_set():
                out.step(f"{done.problem}: following {new.index_prefix} again until a service stands by for it")
                follower = self._indexer_of(Follower(dataclasses.replace(new, attach_alias=True)))
                try:
                    follower.start()
                except AlreadyRunning:  # taken meanwhile: that is the handover
                    done = Handover(handed_over=True)
                    break
                done = hand_over(follower, self._stopped.is_set, self._stopped.wait)
        finally:
            self._indexer = None
            if follower.alive:
                follower.stop()
        if not done.handed_over:
            out.code = ExitCode.INTERRUPTED if done.problem == "interrupted" else ExitCode.ERROR
            out.problems.append(f"{new.index_prefix} is published but not handed over ({done.problem}): "
                                f"{_restart(new)} now; run this command again to follow it until then")
            return False
        out.handed_over = True
        when = (f"{done.takeover_after:.1f}s after this command stopped following it" if done.takeover_after
                else "when this command lost its PostgreSQL session")
        by = "" if done.by in ([], [new.worker_id]) else f" (as {', '.join(done.by)})"
        out.step(f"handed over: the service took client id {new.client_id!r} over{by} {when} "
                 f"(followed live for {done.followed_for:.0f}s)")
        return True

    def _indexer_of(self, follower: Follower) -> Follower:
        self._indexer = follower.indexer  # Ctrl-C stops it, also while it waits for PostgreSQL
        if self._stopped.is_set():
            follower.indexer.stop()
        return follower

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
            if new.documents == "objects":
                from esindexer.ops.objectverify import verify_objects

                report: Any = verify_objects(conn, sink.es, builder, jsonifier, new, repair=True)
            else:
                report = verify(conn, sink, builder, jsonifier, new.client_id, repair=True)
        finally:
            conn.rollback()
            sink.es.close()
        if report.remaining:
            out.problems.append(f"verify still finds differences after a repair: {report.still} "
                                f"(zoids {report.still_examples}); the alias is unchanged")
            return False
        repaired = f" ({report.repaired} repaired and read back)" if report.repaired else ""
        out.step(f"verified: {report.objects} objects, {report.documents} documents, "
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
        out.step(f"alias {ready.alias}: {', '.join(ready.current) or '(none)'} -> {', '.join(now)} "
                 f"({ready.documents} documents; caught up with the commit of {_when(ready.observed)}, the newest "
                 "just before the switch)")
        return True

    def _delete_old(self, conn: Any, es: Any, out: Outcome) -> None:
        from esindexer.es.admin import template_name
        from esindexer.ops.handover import running_workers
        from esindexer.source import graph
        from esindexer.source.partitions import partition_progress

        old = self.live
        running = running_workers(conn, old.client_id)  # the old client id, or any of its partitions
        if running:
            out.problems.append(
                f"the old generation is kept: an indexer with client id {running[0]!r} still runs and would "
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
        workers = [old.client_id, *partition_progress(conn, old.client_id)]
        with conn.cursor() as cur:
            for table in ("esindexer_progress", "esindexer_deletion_cursor", *graph.TABLES):
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
                if cur.fetchone()[0]:  # a cursor left behind would keep the deletion log from being pruned
                    cur.execute(f"DELETE FROM {table} WHERE client_id = ANY(%s)", (workers,))
        conn.commit()
        out.step(f"deleted the old generation: {', '.join(doomed) or 'no index'}, template "
                 f"{template_name(old)}, progress (and object graph, if any) of client id {old.client_id!r}"
                 + (f" and its partitions ({len(workers) - 1})" if len(workers) > 1 else ""))


def _aliased(es: Any, alias: str) -> list[str]:
    return sorted(es.indices.get_alias(name=alias)) if es.indices.exists_alias(name=alias) else []


def _when(tid: int) -> str:
    from esindexer.source.tid import tid_to_datetime

    return tid_to_datetime(tid).isoformat(timespec="milliseconds") if tid > 0 else "never"


def _service_env(new: Settings) -> str:
    return (f"ESINDEXER_INDEX_PREFIX={new.index_prefix} ESINDEXER_CLIENT_ID={new.client_id} "
            f"ESINDEXER_ALIAS={new.alias_name}")


def _restart(new: Settings) -> str:
    return f"restart the service with {_service_env(new)} (it resumes from the generation's saved progress)"


def _locked(new: Settings) -> str:
    return (f"another indexer runs with client id {new.client_id!r} (the new generation's): stop it and run "
            "this command again; the service takes the new generation over when this command says so")
