"""A real Plone 6 site, built by Plone's own code, indexed by the real service (issue 23).

``scripts/plone`` installs Plone into its own virtualenv (pinned by
deploy/plone/constraints.txt) and runs ``tests/plone/site_script.py`` inside Plone's
interpreter: it creates the site with ``addPloneSite``, content of every default type in
nested folders, workflow transitions and CMFEditions versions, then edits, a move, a
rename and deletions, then packs. Plone's own catalog is the ground truth.

What is checked here, in both history modes, before and after the live changes and the
pack: every record converts (no dead letter), ``verify`` finds the index equal to the
database, and every content item the catalog knows has a document carrying its UID.
(Searching the *objects* the way Plone's catalog answers is the object-model and Plone
issues' work; this is the harness and the record-level truth they build on.)

Run alone with ``scripts/test -m plone``; the first run installs Plone (a few minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import both_history_modes, run_esindexer, scalar

pytestmark = [pytest.mark.plone, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PLONE = ROOT / "scripts" / "plone"
FOLDERS, ITEMS = 12, 120


def plone(*args: str, stdin: str | None = None, timeout: float = 900) -> dict:
    """Run ``scripts/plone ARGS``; the step's JSON line (its last line of output)."""
    done = subprocess.run([str(PLONE), *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          env={k: v for k, v in os.environ.items() if not k.startswith("ESINDEXER_")})
    if done.returncode != 0:
        raise AssertionError(f"scripts/plone {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def catalog(instance: Path, queries: list[dict]) -> list[list[str]]:
    return plone("run", str(instance), "query", stdin=json.dumps(queries))["answers"]


def _settings(db_dsn: str, es_url: str, es_prefix: str) -> dict[str, str]:
    return {"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_INDEX_PREFIX": es_prefix.rstrip("-"),
            "ESINDEXER_INDEX_REPLICAS": "0", "ESINDEXER_METRICS_PORT": "0"}


def _index_and_check(db_dsn: str, es, es_url: str, es_prefix: str, instance: Path) -> None:
    env = _settings(db_dsn, es_url, es_prefix)
    done = run_esindexer("run", "--until-caught-up", env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    letters = scalar(db_dsn, "SELECT count(*) FROM esindexer_dead_letters")
    assert letters == 0, run_esindexer("dead-letters", env=env).stdout[-3000:]
    verified = run_esindexer("verify", env=env, timeout=600)
    assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr[-3000:]

    [uids] = catalog(instance, [{"path": {"query": "/Plone"}}])  # every cataloged content item
    assert len(uids) > FOLDERS
    es.indices.refresh(index=f"{es_prefix}*")
    found: set[str] = set()
    for start in range(0, len(uids), 500):
        part = uids[start:start + 500]
        answer = es.search(index=f"{es_prefix}*", size=0, query={"terms": {"more._plone.uuid": part}},
                           aggs={"uids": {"terms": {"field": "more._plone.uuid", "size": 1000}}})
        found |= {bucket["key"] for bucket in answer["aggregations"]["uids"]["buckets"]}
    assert set(uids) <= found, f"{len(set(uids) - found)} catalog UIDs have no document"


@both_history_modes
def test_a_real_plone_site_indexes_completely_before_and_after_changes_and_a_pack(
        keep_history, db_dsn, es, es_url, es_prefix, tmp_path):
    instance = tmp_path / "plone"
    plone("instance", str(instance), db_dsn, "true" if keep_history else "false")
    built = plone("run", str(instance), "build", str(FOLDERS), str(ITEMS), "23")
    assert built == {"step": "build", "folders": FOLDERS, "items": ITEMS}
    records = scalar(db_dsn, "SELECT count(*) FROM object_state" if not keep_history else
                     "SELECT count(*) FROM current_object")
    print(f"Plone site: {records} records ({'history-preserving' if keep_history else 'history-free'})")
    _index_and_check(db_dsn, es, es_url, es_prefix, instance)

    changed = plone("run", str(instance), "change", "5")
    assert changed["edited"] and changed["moved"] and changed["renamed"] and changed["deleted"]
    plone("run", str(instance), "pack")
    _index_and_check(db_dsn, es, es_url, es_prefix, instance)
