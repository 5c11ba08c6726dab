"""The object model on the cases a real application produces beside plain edits (issue 22):
an object only the intid-like registry still refers to, garbage that refers to a part, a
part shared by two objects, an object held by two containers, a top folder renamed (and
kill -9 right after), the undo of a move. The service runs as operators run it; the truth
is ZODB's (``tests/objects/truth.py``), and the spec (/work/objects-spec.md) says what the
documents must be where the application's own notion is not enough.
"""

from __future__ import annotations

import time

import psycopg2
import pytest
from persistent.mapping import PersistentMapping

from tests.objects import corpus, index, truth
from tests.objects.app import RichText
from tests.objects.index import kql_match
from tests.support import both_history_modes, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not index.MODEL, reason="the object model (esindexer.objects, issue 22) is not here yet"),
]


def item_in(built, folder: str, nth: int = 0) -> str:
    return [p for p in built.item_paths if p.rpartition("/")[0] == folder][nth]


def resolve_zoid(root, path: str) -> int:
    return truth.zoid(corpus.resolve(root, path))


@both_history_modes
def test_an_item_only_the_registry_refers_to_leaves_the_index(live, es, es_prefix):
    """Detached from its folder but still registered (the intid utility keeps its KeyRef):
    a named record held under a key that is not its name is not in the tree."""
    path = item_in(live.built, "/f2")
    name = path.rpartition("/")[2]
    zoid, since = live.do(lambda root: (resolve_zoid(root, path), corpus.detach(corpus.resolve(root, "/f2"), name))[0])
    gone = index.wait_gone(es, es_prefix, {zoid}, since)
    print(f"\ndetached, still registered: gone after {gone:.2f} s")
    registered = live.writer.read(lambda root: {truth.zoid(r.object) for r in root["registry"]._refs.values()})
    assert zoid in registered
    live.settle()
    live.do(lambda root: corpus.attach(corpus.resolve(root, "/a1"), name, _registered(root, zoid)))
    live.settle()
    assert live.truth()[zoid].path == f"/a1/{name}"


def _registered(root, zoid: int):
    return next(r.object for r in root["registry"]._refs.values() if truth.zoid(r.object) == zoid)


@both_history_modes
def test_garbage_that_refers_to_a_part_does_not_take_it_from_its_owner(live):
    """An unreachable mapping (dropped from the item, not yet packed) still refers to the
    item's text holder: the holder stays the item's part, and its edits re-index the item."""
    path = item_in(live.built, "/f1/sub")

    def keep_a_second_way(root):
        item = corpus.resolve(root, path)
        item.notes = PersistentMapping({"holder": item.body._holder})
        return truth.zoid(item)

    zoid, _ = live.do(keep_a_second_way)
    live.settle()
    live.do(lambda root: delattr(corpus.resolve(root, path), "notes"))  # the mapping becomes garbage
    live.settle()
    _, since = live.do(lambda root: corpus.edit_body(root, path, "<p>afterwards garbagecase</p>"))
    took = _wait_text(live, "garbagecase", {zoid}, since)
    print(f"\npart edit with garbage referring to the part: found after {took:.2f} s")
    live.settle()


def _wait_text(live, word: str, zoids: set[int], since: float, timeout: float = 30) -> float:
    wait_for(lambda: live.found(kql_match("text", word)) == zoids, timeout=timeout,
             message=f"exactly {sorted(zoids)} found by text : {word} (found {sorted(live.found(kql_match('text', word)))})")
    return time.monotonic() - since


@both_history_modes
def test_a_part_shared_by_two_items_is_folded_into_neither_then_back_into_its_owner(live):
    a_path, b_path = item_in(live.built, "/f2", 0), item_in(live.built, "/f2", 1)

    def give_a_a_word(root):
        corpus.edit_body(root, a_path, "<p>sharedholder words</p>")
        a = corpus.resolve(root, a_path)
        return truth.zoid(a), truth.zoid(a.body._holder)

    (a, holder), _ = live.do(give_a_a_word)
    _wait_text(live, "sharedholder", {a}, time.monotonic())

    def share(root):
        b = corpus.resolve(root, b_path)
        b.body._holder = corpus.resolve(root, a_path).body._holder
        b._p_changed = True  # the inline RichText changed
        return truth.zoid(b)

    b, _ = live.do(share)
    docs = live.docs

    def shared_state():
        found = docs()
        return holder not in found[a].get("parts", []) and holder not in found[b].get("parts", [])

    wait_for(shared_state, timeout=30, message=f"holder {holder} a part of neither {a} nor {b}")
    assert live.found(kql_match("text", "sharedholder")) == set()  # shared: folded into neither

    _, since = live.do(lambda root: setattr(corpus.resolve(root, b_path), "body", RichText("<p>own again</p>")))
    took = _wait_text(live, "sharedholder", {a}, since)  # only b's record changed: a's document follows
    print(f"\nno longer shared: the owner's document has the part again after {took:.2f} s")
    live.settle()
    assert holder in live.docs()[a]["parts"]


@both_history_modes
def test_an_item_in_two_containers_takes_the_nearest_then_the_smaller_zoid(live):
    path = item_in(live.built, "/c1/sub")  # depth 3
    name = path.rpartition("/")[2]

    def link(root, *folders):
        item = corpus.resolve(root, path)
        for folder in folders:
            corpus.resolve(root, folder).add(name, item)
        return truth.zoid(item)

    zoid, _ = live.do(lambda root: link(root, "/f1/sub", "/f2"))  # depth 3 and 2: /f2 wins
    live.settle()
    assert live.docs()[zoid]["path"] == f"/f2/{name}"
    live.do(lambda root: link(root, "/f1"))  # depth 2 too, and a smaller zoid than /f2
    live.settle()
    assert live.docs()[zoid]["path"] == f"/f1/{name}"
    live.do(lambda root: [corpus.resolve(root, f).detach(name) for f in ("/f1", "/f2")])
    live.settle()
    folders = {o.path: o.zoid for o in live.truth().values() if o.path in ("/f1/sub", "/c1/sub")}
    assert live.docs()[zoid]["path"] == f"{min(folders, key=folders.get)}/{name}"  # depth 3 both: the smaller zoid
    live.do(lambda root: corpus.resolve(root, "/f1/sub").detach(name))
    live.settle()
    assert live.docs()[zoid]["path"] == path


@both_history_modes
def test_renaming_a_top_folder_repaths_its_subtree_even_across_kill_9(live, es_url, db_dsn, es_prefix, tmp_path):
    moved = sum(1 for o in live.truth().values() if o.path.startswith("/f1/"))
    live.do(lambda root: corpus.rename(root, "/f1", "f1x"))
    took = live.settle()
    print(f"\nrename of /f1 ({moved} objects below): index == truth after {took:.2f} s")
    live.do(lambda root: corpus.rename(root, "/f1x", "f1"))
    time.sleep(0.1)
    live.service.kill()
    behind = truth.compare(index.expected(live.truth()), index.actual(live.docs(), live.truth()))
    live.service = index.start_service(db_dsn, es_url, es_prefix, tmp_path, "restarted")
    index.wait_ready(live.service)
    took = live.settle(120)
    print(f"rename back, kill -9 0.1 s later ({behind[0] if behind else 'index already equal'}), restart: "
          f"index == truth after {took:.1f} s")


@pytest.mark.parametrize("keep_history", [True], ids=["history-preserving"])
def test_the_undo_of_a_move_puts_the_subtree_back(live):
    before = {o.zoid: o.path for o in live.truth().values() if o.path.startswith("/f1/sub/deep")}
    live.do(lambda root: corpus.move(root, "/f1/sub/deep", "/c1"))
    live.settle()
    corpus.undo_last(live.writer.db)
    live.settle()
    after = live.truth()
    assert {z: after[z].path for z in before} == before


@both_history_modes
def test_a_replay_from_the_start_never_shows_an_older_combination(live, db_dsn, es_url, es_prefix, tmp_path):
    """Progress set back to the start (an operator's replay): while the service reads the
    history again, no document ever goes back (tid, parts_tid, path) and no removed object
    comes back (not even once Elasticsearch forgot the deletes); then index == truth."""
    live.writer.start()
    time.sleep(4)
    live.writer.stop()
    live.settle()
    before = {z: (d.get("tid"), d.get("parts_tid"), d.get("path")) for z, d in live.docs().items()}
    assert live.service.stop() == 0
    # As if the removals were older than a minute: Elasticsearch forgets a deleted document's
    # version after index.gc_deletes (60 s), and only that version kept an older write out.
    live.es.indices.put_settings(index=f"{es_prefix}*", settings={"index.gc_deletes": "0s"})
    live.es.indices.refresh(index=f"{es_prefix}*")
    with psycopg2.connect(db_dsn) as pg, pg.cursor() as cur:
        cur.execute("UPDATE esindexer_progress SET tid = -1")
    pg.close()
    live.service = index.start_service(db_dsn, es_url, es_prefix, tmp_path, "replay")
    regressions: dict[int, tuple] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = {z: (d.get("tid"), d.get("parts_tid"), d.get("path")) for z, d in live.docs().items()}
        regressions.update({z: (before.get(z), seen) for z, seen in now.items() if before.get(z) != seen})
        if now == before and index.caught_up_objects(db_dsn):
            break
        time.sleep(0.2)
    assert not regressions, f"{len(regressions)} documents differed during the replay (before, seen): " + \
        ", ".join(f"{z}: {v}" for z, v in list(regressions.items())[:10])
    live.settle()
