"""When a captured pack deletion may be sent: the ordering that keeps a deleted object
from coming back after an Elasticsearch crash (pure logic, no servers; the real-server
proof is tests/source/test_deletions.py)."""

from __future__ import annotations

from esindexer.pipeline.committer import ready_deletions

# (xid, log id, zoid, tid of the object's last state)
LOG = [(10, 1, 100, 5), (10, 2, 101, 7), (11, 3, 102, 6), (12, 4, 103, 9)]


def test_deletions_up_to_the_settled_progress_go():
    assert ready_deletions(LOG, progress_tid=7, all_settled=False) == LOG[:3]


def test_the_first_deletion_that_must_wait_stops_the_rest():
    # zoid 101's last write (tid 7) may still be in flight at progress 6: it and
    # everything after it in log order wait, so the cursor never passes it.
    assert ready_deletions(LOG, progress_tid=6, all_settled=False) == LOG[:1]
    assert ready_deletions(LOG, progress_tid=4, all_settled=False) == []


def test_with_nothing_in_flight_everything_goes():
    assert ready_deletions(LOG, progress_tid=-1, all_settled=True) == LOG


def test_nothing_pending_is_nothing_to_send():
    assert ready_deletions([], progress_tid=10, all_settled=False) == []
