"""A real Plone 6 site, built by Plone's own code, indexed by the real service with
``ESINDEXER_PROFILE=plone``: Elasticsearch finds exactly what Plone's catalog finds (issue 23).

``scripts/plone`` installs Plone into its own virtualenv (pinned by
deploy/plone/constraints.txt) and runs ``tests/plone/site_script.py`` inside Plone's
interpreter: it creates the site with ``addPloneSite``, content of every default type in
nested folders (Document, News Item, Event, Folder, Collection, Link, File, Image),
workflow transitions and CMFEditions versions, then edits (new versions), a move, a
rename, deletions and transitions, then packs.

Plone's own catalog is the ground truth. In both history modes, after the build, after
the live changes and after the pack, the service catches up and then, for every query of
:mod:`tests.plone.queries` (by type, review state, subject, path prefix and children,
date ranges on effective/expires/modified/start, a word of the body, sorted by
modification date), the UIDs Elasticsearch returns equal the UIDs
``portal_catalog.unrestrictedSearchResults`` returns (as an administrator: permissions
do not filter). The index holds exactly the cataloged items, one document each (version
copies, tools and removed items are not content hits), nothing is dead-lettered, and
``esindexer verify`` finds the index equal to the database's object tree.

One site per history mode, reused by every query and phase, to keep the run short.
Run alone with ``scripts/test -m plone``; the first run installs Plone (a few minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.plone.queries import es_query, minute
from tests.support import both_history_modes, run_esindexer, scalar

pytestmark = [pytest.mark.plone, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PLONE = ROOT / "scripts" / "plone"
FOLDERS, ITEMS = 10, 70
def plone(*args: str, stdin: str | None = None, timeout: float = 900) -> dict:
    """Run ``scripts/plone ARGS``; the step's JSON line (its last line of output)."""
    done = subprocess.run([str(PLONE), *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          env={k: v for k, v in os.environ.items() if not k.startswith("ESINDEXER_")})
    if done.returncode != 0:
        raise AssertionError(f"scripts/plone {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _settings(db_dsn: str, es_url: str, es_prefix: str) -> dict[str, str]:
    return {"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_INDEX_PREFIX": es_prefix.rstrip("-"),
            "ESINDEXER_INDEX_REPLICAS": "0", "ESINDEXER_METRICS_PORT": "0", "ESINDEXER_PROFILE": "plone"}


def _search(es: Any, index: str, query: dict, sort: list | None = None) -> list[dict]:
    hits = es.search(index=index, query=query, size=1000, sort=sort,
                     source=["fields.uid", "fields.modified"])["hits"]["hits"]
    return [hit["_source"]["fields"] for hit in hits]


def _index(env: dict[str, str], db_dsn: str) -> float:
    started = time.monotonic()
    done = run_esindexer("run", "--until-caught-up", env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    letters = scalar(db_dsn, "SELECT count(*) FROM esindexer_dead_letters")
    assert letters == 0, run_esindexer("dead-letters", env=env).stdout[-3000:]
    seconds = time.monotonic() - started
    # the object verify: every object of the tree has its document, none is stale or extra
    verified = run_esindexer("verify", env=env, timeout=600)
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]
    return seconds


def _compare(es: Any, index: str, truth: dict[str, Any]) -> dict[str, int]:
    """Every query's UIDs from Elasticsearch equal the catalog's (``truth``: the queries, the
    catalog's answers and every cataloged UID, from the step's run); the comparison's figures."""
    es.indices.refresh(index=index)
    everything = _search(es, index, {"exists": {"field": "fields.uid"}})
    # one document per cataloged item: no version copy, tool or removed item
    assert sorted(f["uid"] for f in everything) == truth["every"]
    figures = {"queries": len(truth["queries"]), "documents": len(everything), "hits": 0}
    for query, expected in zip(truth["queries"], truth["answers"], strict=True):
        es_q, sort = es_query(query)
        found = _search(es, index, es_q, sort)
        uids = [f["uid"] for f in found]
        figures["hits"] += len(uids)
        if sort is None:
            assert sorted(uids) == expected, f"{query}: Elasticsearch {len(uids)}, catalog {len(expected)}: " \
                f"only in ES {sorted(set(uids) - set(expected))}, only in catalog {sorted(set(expected) - set(uids))}"
        else:
            # The catalog sorts by minute (DateIndex); the orders agree minute by minute.
            assert sorted(uids) == sorted(expected), query
            when = {f["uid"]: minute(f["modified"]) for f in found}
            assert [when[u] for u in expected] == [when[u] for u in uids], query
    return figures


@both_history_modes
def test_elasticsearch_finds_what_the_plone_catalog_finds_before_and_after_changes_and_a_pack(
        keep_history, db_dsn, es, es_url, es_prefix, tmp_path):
    mode = "history-preserving" if keep_history else "history-free"
    instance = tmp_path / "plone"
    env = _settings(db_dsn, es_url, es_prefix)
    index = es_prefix.rstrip("-")
    plone("instance", str(instance), db_dsn, "true" if keep_history else "false")
    started = time.monotonic()
    built = plone("run", str(instance), "build", str(FOLDERS), str(ITEMS), "23", "--answer")
    assert {k: built[k] for k in ("folders", "items")} == {"folders": FOLDERS, "items": ITEMS}
    build_seconds = time.monotonic() - started
    records = scalar(db_dsn, "SELECT count(*) FROM current_object" if keep_history else
                     "SELECT count(*) FROM object_state")
    seconds = _index(env, db_dsn)
    figures = _compare(es, index, built["catalog"])
    print(f"\nPlone site ({mode}): {records} records built (and asked) in {build_seconds:.1f}s, indexed in "
          f"{seconds:.1f}s; after the build: {figures}")

    changed = plone("run", str(instance), "change", "5", "--answer")
    assert changed["edited"] and changed["moved"] and changed["renamed"] and changed["deleted"]
    seconds = _index(env, db_dsn)
    figures = _compare(es, index, changed["catalog"])
    done = {k: v for k, v in changed.items() if k not in ("catalog", "step", "edited_ids")}
    print(f"after the changes ({done}, indexed in {seconds:.1f}s): {figures}")

    packed = plone("run", str(instance), "pack", "--answer", "--edited=" + ",".join(changed["edited_ids"]))
    seconds = _index(env, db_dsn)
    figures = _compare(es, index, packed["catalog"])
    print(f"after the pack (indexed in {seconds:.1f}s): {figures}")
