"""The pure rules behind partitioned workers: the setting, the derived ids, which sets of
clients cover every object, and which captured deletions a partition passes or waits for."""

from __future__ import annotations

import pytest

from esindexer.config import load_settings, partition_worker_id
from esindexer.errors import ConfigError
from esindexer.pipeline.committer import partition_filter, ready_deletions
from esindexer.source.partitions import covering_sets


def _settings(**env: str):
    return load_settings(env={"ESINDEXER_PG_DSN": "dbname=x", **{f"ESINDEXER_{k.upper()}": v for k, v in env.items()}})


def test_the_partition_setting_and_the_worker_id():
    assert _settings().partition is None and _settings().worker_id == "esindexer"
    s = _settings(partition=" 1 / 4 ", client_id="shop")
    assert s.partition == "1/4" and s.partition_spec == (1, 4)
    assert s.worker_id == "shop.partition-1-of-4" == partition_worker_id("shop", 1, 4)
    assert s.client_id == "shop"  # printed as given; the derived id is used underneath
    assert load_settings(env={"ESINDEXER_PG_DSN": "dbname=x"}, cli={"partition": "0/1"}).worker_id == \
        "esindexer.partition-0-of-1"


@pytest.mark.parametrize("value", ["2/2", "-1/2", "1/0", "1", "a/b", "1/2/3"])
def test_a_bad_partition_is_a_clear_configuration_error(value):
    with pytest.raises(ConfigError) as raised:
        _settings(partition=value)
    assert "ESINDEXER_PARTITION" in str(raised.value) and "i/N" in str(raised.value)


def test_only_sets_that_cover_every_object_are_seeds():
    p = lambda i, n: partition_worker_id("c", i, n)  # noqa: E731
    assert covering_sets("c", {}) == []
    assert covering_sets("c", {"c": 5}) == [["c"]]
    assert covering_sets("c", {p(1, 2): 5}) == []  # partition 0 never ran: its objects are not covered
    assert covering_sets("c", {p(0, 2): 5, p(1, 2): 6, p(3, 4): 1}) == [[p(0, 2), p(1, 2)]]
    assert covering_sets("c", {"c": 1, p(0, 1): 2, "cx": 3, "c.partition-0-of-2x": 4}) == [["c"], [p(0, 1)]]
    assert covering_sets("c.x", {"c": 1}) == []


def test_a_partition_passes_the_deletions_of_other_partitions_and_waits_for_its_own():
    owns = partition_filter(_settings(partition="0/2"))
    assert owns is not None and owns(4) and not owns(5)
    assert partition_filter(_settings()) is None
    # (xid, id, zoid, tid): progress is at tid 100
    items = [(1, 1, 5, 500), (1, 2, 4, 90), (1, 3, 7, 900), (1, 4, 6, 200), (1, 5, 9, 50)]
    assert ready_deletions(items, 100, False, owns) == items[:3]  # zoid 6 (tid 200 > 100) waits
    assert ready_deletions(items, 100, False) == []  # unpartitioned: the first one waits
    assert ready_deletions(items, 100, True, owns) == items
