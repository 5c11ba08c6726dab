"""The comparison of one object, and the repair write it picks (pure: no servers)."""

from __future__ import annotations

import orjson
import pytest

from esindexer.documents import Action
from esindexer.es.scan import Held
from esindexer.ops.compare import Difference, Expected, differences, lagging

T = 1_000_000
BODY = {"zoid": 7, "tid": T, "state": {"title": "x"}}
ACTION = Action("index", "p-objects", 7, T, T, "a.B", orjson.dumps(BODY))


def held(version: int, tid: int | None = T, index: str = "p-objects", source: dict | None = None) -> Held:
    return Held(index, 7, tid, version, seq_no=11, primary_term=2, source=source)


def kinds(found: list[Difference]) -> list[tuple[str, str | None]]:
    return [(d.kind, d.fix.mode if d.fix else None) for d in found]


INDEX = Expected(7, "index", T, ACTION)


def test_in_step_is_no_difference_and_deep_compares_the_body():
    assert differences(INDEX, [held(T, source=BODY)], deep=True) == []
    assert differences(INDEX, [held(T, source={**BODY, "text": "edited"})], deep=False) == []
    assert kinds(differences(INDEX, [held(T, source={**BODY, "text": "edited"})], deep=True)) == [
        ("changed", "external")]


def test_a_hand_edit_is_overwritten_only_on_the_revision_read():
    """Version tid + 1 (an unversioned PUT): the repair is conditional on seq_no/primary term."""
    [found] = differences(INDEX, [held(T + 1, source={**BODY, "text": "edited"})], deep=True)
    assert found.kind == "changed" and found.fix is not None
    assert (found.fix.mode, found.fix.seq_no, found.fix.primary_term) == ("conditional", 11, 2)


def test_missing_is_written_externally_then_created_over_a_tombstone():
    assert kinds(differences(INDEX, [], deep=False)) == [("missing", "create_on_conflict")]


def test_stale_ahead_and_a_copy_in_another_index():
    assert kinds(differences(INDEX, [held(T - 5, tid=T - 5)], deep=False)) == [("stale", "external")]
    # ahead (the database went back in time): only the revision read is written over
    assert kinds(differences(INDEX, [held(T + 5, tid=T + 5)], deep=False)) == [("ahead", "conditional")]
    assert kinds(differences(INDEX, [held(T - 5, tid=T - 5, index="p-other")], deep=False)) == [
        ("orphan", "external"), ("missing", "create_on_conflict")]
    assert kinds(differences(INDEX, [held(T + 1, tid=None)], deep=False)) == [("changed", "conditional")]


def test_deleted_gone_and_unconvertible_objects():
    deleted = Expected(7, "delete", T)
    [orphan] = differences(deleted, [held(T - 5, tid=T - 5)], deep=False)
    assert orphan.kind == "orphan" and orphan.fix is not None
    assert (orphan.fix.action.op, orphan.fix.action.version, orphan.fix.mode) == ("delete", T, "external")
    [ahead] = differences(deleted, [held(T + 5, tid=T + 5)], deep=False)
    assert ahead.kind == "ahead" and ahead.fix is not None
    assert (ahead.fix.action.op, ahead.fix.mode, ahead.fix.seq_no) == ("delete", "conditional", 11)
    [gone] = differences(Expected(7, "gone"), [held(T + 1)], deep=False)
    assert gone.fix is not None and gone.fix.action.version == T + 2 and gone.fix.mode == "external"
    assert kinds(differences(Expected(7, "error", T), [], deep=False)) == [("missing", None)]
    assert differences(Expected(7, "lettered", T), [], deep=False) == []


@pytest.mark.parametrize(("expected", "kind", "progress", "unapplied", "lag"), [
    (INDEX, "missing", T - 1, (), True),  # the service has not reached this commit
    (INDEX, "missing", T, (), False),  # it has: the document had to be there
    (INDEX, "stale", -1, (), False),  # no progress saved: nothing is explained by lag
    (INDEX, "ahead", T - 1, (), False),
    (Expected(7, "gone"), "orphan", T, (7,), True),  # a pack deletion not applied yet
    (Expected(7, "gone"), "orphan", T, (), False),
    (Expected(7, "delete", T), "orphan", T - 1, (), True),
])
def test_lag_is_told_from_drift(expected, kind, progress, unapplied, lag):
    assert lagging(expected, Difference(7, kind), progress, set(unapplied)) is lag


def test_repair_requests_are_bounded():
    from esindexer.es import repair
    from esindexer.es.repair import Write

    small = [Write(ACTION)] * 2500
    assert [len(r) for r in repair._requests(small)] == [1000, 1000, 500]
    big = Action("index", "p-objects", 7, T, T, "a.B", b"x" * (4 * 1024 * 1024))
    assert [len(r) for r in repair._requests([Write(big)] * 5)] == [2, 2, 1]
    assert repair._requests([]) == []
