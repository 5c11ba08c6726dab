"""The seam between the pipeline and the search engine: the :class:`Sink` protocol.

The pipeline (:mod:`esindexer.pipeline`) and the operator commands (:mod:`esindexer.ops`)
speak to a sink only through this protocol, in sink-neutral terms: versioned
:class:`~esindexer.documents.Action` s go in, a :class:`SendResult` says what became of
each, and :meth:`Sink.indexed` reads back what the sink holds. Elasticsearch is the
implementation (:class:`esindexer.es.sink.ElasticsearchSink`). OpenSearch is the second
engine: it answers the same REST API, so the same sink drives it through OpenSearch's
client and mapping dialect (:mod:`esindexer.opensearch`, chosen by
``ESINDEXER_SEARCH_ENGINE`` in :func:`esindexer.es.client.make_es_client`); the pipeline and
the commands did not change. An engine with another API would implement this protocol
in a package of its own.

A sink's contract, which the pipeline's guarantees rest on:

- ``send`` returns only when every action is *settled*: written (or already there at
  that or a newer version), or refused for good (a :class:`Rejected`, which becomes a
  dead letter). Transient trouble is retried inside ``send``; it raises
  :class:`~esindexer.errors.Abandoned` when the service stops meanwhile and
  :class:`~esindexer.errors.SetupError` when no retry can help.
- writes are versioned: an action older than what the sink holds changes nothing.
"""

from __future__ import annotations

import collections
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from esindexer.documents import Action


@dataclass(slots=True)
class Rejected:
    """An action the sink refused for good (a dead letter)."""

    action: Action
    status: int
    reason: str


@dataclass
class SendResult:
    """What became of the actions given to :meth:`Sink.send`.

    Settled actions are only counted (by operation), not kept: a batch of one huge
    transaction must not pin every document it sent in memory until it is settled.
    """

    done: collections.Counter[str] = field(default_factory=collections.Counter)
    rejected: list[Rejected] = field(default_factory=list)
    #: indices that received a settled write (what a refresh would have to publish)
    touched: set[str] = field(default_factory=set)
    requests: int = 0
    seconds: float = 0.0

    @property
    def done_total(self) -> int:
        return sum(self.done.values())

    def settle(self, actions: Sequence[Action]) -> None:
        for action in actions:
            self.done[action.op] += 1
            self.touched.add(action.index)


@dataclass(frozen=True, slots=True)
class Indexed:
    """One document the sink holds: where, for which object, at which version (tid)."""

    index: str
    zoid: int
    tid: int


@dataclass(frozen=True, slots=True)
class Unmapped:
    """Documents holding fields the index keeps but could not map (past its field limit,
    or a value its mapping refused), so that searches on those fields miss them."""

    documents: int
    #: field name -> documents carrying it unmapped, the most frequent among a sample
    fields: dict[str, int]
    #: index -> documents with unmapped fields there
    per_index: dict[str, int]


class Sink(Protocol):
    """Where documents go. See the module docstring for the contract."""

    @property
    def indices(self) -> tuple[str, ...]:
        """Every index (or collection) this configuration may write to."""
        ...

    def ensure_indices(self) -> tuple[str, ...]:
        """Create what is missing (idempotent; at every start); return the indices."""
        ...

    def missing_indices(self) -> tuple[str, ...]:
        """The routed indices that do not exist (checked at start, before creating them:
        all of them gone while progress says they were filled means they were lost)."""
        ...

    def send(self, actions: Sequence[Action]) -> SendResult:
        """Write the actions; return when every one is settled."""
        ...

    def indexed(self, low: int | None = None, high: int | None = None) -> Iterator[list[Indexed]]:
        """Pages of the documents held (with ``low <= zoid <= high``), in zoid order."""
        ...

    def newest(self, count: int) -> list[Indexed]:
        """The ``count`` documents with the highest tids, newest first (the check for a
        database that went back in time: :mod:`esindexer.pipeline.rewind`)."""
        ...

    def behind_mark(self) -> dict[str, Any] | None:
        """The mark saying the database was found behind the index, or None (kept with
        the indices, not in the database a restore rolls back: :mod:`esindexer.es.marks`)."""
        ...

    def set_behind_mark(self, mark: dict[str, Any] | None) -> None:
        """Write the mark on every index (None: remove it)."""
        ...

    def refresh(self, indices: Collection[str] | None = None) -> None:
        """Make everything written so far to ``indices`` (default: all of this sink's)
        visible to searches and to :meth:`indexed`."""
        ...

    def unmapped(self) -> Unmapped:
        """The documents whose fields were not all mapped, and the fields (see
        :class:`Unmapped`): a search on such a field cannot find them."""
        ...
