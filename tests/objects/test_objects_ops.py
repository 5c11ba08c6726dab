"""The operator commands on object documents (issue 22, point 6) and the model's settings,
on the test application: ``verify`` finds hand changes and ``--repair`` gives back the
truth; ``explain`` says what a record is; ``ESINDEXER_OBJECT_CLASSES`` picks the documents
without changing anyone's path; a cycle of folders cut from the root leaves the index."""

from __future__ import annotations

import pytest

from tests.objects import corpus, index, truth
from tests.support import both_history_modes, open_zodb, run_esindexer, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not index.MODEL, reason="the object model (esindexer.objects, issue 22) is not here yet"),
]


def esindexer(live, *args: str, code: int | None = 0):
    done = run_esindexer(*args, env=live.env, timeout=300)
    if code is not None:
        assert done.returncode == code, f"esindexer {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def counts(output: str) -> dict[str, int]:
    """``missing 1`` lines of verify's report."""
    found = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            found[parts[0]] = int(parts[1])
    return found


@both_history_modes
def test_verify_finds_hand_changes_and_repair_gives_back_the_truth(live, es):
    esindexer(live, "verify")
    found = live.truth()
    items = sorted(z for z, o in found.items() if o.cls == index.ITEM)
    docs = live.docs()
    name = docs[items[0]]["_index"]
    mime = live.writer.read(lambda root: truth.zoid(next(iter(root["settings"].mimetypes.values()))))
    es.delete(index=name, id=str(items[0]))  # missing
    es.update(index=name, id=str(items[1]), doc={"path": "/hand/made"})  # changed
    es.index(index=name, id=str(mime), document={"class": "tests.objects.app.MimeType", "zoid": mime,
                                                  "path": "/settings/mime-0"})  # orphan: not a tree node
    es.indices.refresh(index=name)
    report = esindexer(live, "verify", code=None)
    assert report.returncode != 0, report.stdout
    seen = counts(report.stdout)
    assert (seen.get("missing"), seen.get("orphan")) == (1, 1), report.stdout
    assert seen.get("changed", 0) + seen.get("stale", 0) == 1, report.stdout  # the hand-made path
    deep = counts(esindexer(live, "verify", "--deep", code=None).stdout)
    assert (deep.get("missing"), deep.get("orphan"), deep.get("changed", 0) + deep.get("stale", 0)) == (1, 1, 1), deep
    esindexer(live, "verify", "--repair")
    index.settle(es, live.prefix, live.truth, timeout=30)
    again = esindexer(live, "verify", "--deep")
    assert all(v == 0 for k, v in counts(again.stdout).items() if k in ("missing", "orphan", "stale", "changed")), \
        again.stdout


@pytest.mark.parametrize("keep_history", [False], ids=["history-free"])
def test_explain_says_what_each_record_is(live):
    def pick(root):
        item = corpus.resolve(root, live.built.item_paths[5])
        settings = root["settings"]
        infra = [truth.zoid(r) for tree in settings.records.values() for r in tree.values()]
        return (truth.zoid(item), truth.zoid(item.body._holder), truth.zoid(next(iter(settings.mimetypes.values()))),
                truth.zoid(settings), infra)

    item, holder, mime, settings, infra = live.writer.read(pick)
    path = live.built.item_paths[5]
    said = esindexer(live, "explain", str(item)).stdout
    assert path in said and str(holder) in said, said
    said = esindexer(live, "explain", str(holder)).stdout
    assert "part of object" in said and str(item) in said and path in said, said
    said = esindexer(live, "explain", str(mime)).stdout
    assert "no document" in said and "under its name" in said, said
    doc = live.docs()[settings]
    folded, omitted = set(doc["parts"]), doc["parts_omitted"]
    assert len(folded) == 256 and omitted > 0, (len(folded), omitted)  # the budget: nearest parts first
    said = esindexer(live, "explain", str(next(z for z in infra if z in folded))).stdout
    assert f"part of object {settings}" in said and "its content is in that object's document" in said, said


@pytest.mark.parametrize("keep_history", [False], ids=["history-free"])
def test_explain_of_a_part_beyond_the_budget_says_it_is_left_out(live):
    def pick(root):
        settings = root["settings"]
        return truth.zoid(settings), [truth.zoid(r) for tree in settings.records.values() for r in tree.values()]

    settings, infra = live.writer.read(pick)
    folded = set(live.docs()[settings]["parts"])
    left_out = [z for z in infra if z not in folded]
    assert left_out
    said = esindexer(live, "explain", str(left_out[0])).stdout  # (it used to say "its content is in ...")
    assert f"part of object {settings}" in said, said
    assert "its content is in that object's document" not in said, \
        f"a part beyond the budget (not in parts of {settings}) is said to be in the document:\n{said}"


@pytest.mark.parametrize("keep_history", [False], ids=["history-free"])
def test_only_the_configured_classes_become_documents(keep_history, db_dsn, es, es_url, es_prefix):
    db = open_zodb(db_dsn, keep_history)
    corpus.build_corpus(db, items=200, infra_records=300, mimetypes=20)
    db.close()
    from tests.pipeline.processes import service_env

    env = {k: v for k, v in service_env(db_dsn, es_url, es_prefix, DOCUMENTS="objects",
                                         OBJECT_CLASSES="tests.objects.app.Item,*.Registry").items()
           if k.startswith("ESINDEXER_")}
    done = run_esindexer("run", "--until-caught-up", env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = truth.objects(db_dsn, keep_history)
    wanted = {z: o for z, o in found.items() if o.cls in (index.ITEM, "tests.objects.app.Registry")}
    truth.assert_same(index.expected(wanted), index.actual(index.documents(es, es_prefix), wanted))


@both_history_modes
def test_a_cycle_of_folders_cut_from_the_root_leaves_the_index(live, es):
    """/f2 is put into /f1/sub/deep too (a cycle: f2 -> ... and deep -> f2), then /f1 is cut
    from the root: /f1's subtree and /f2 under it are unreachable, though they hold each other."""
    live.do(lambda root: corpus.resolve(root, "/f1/sub/deep").add("f2", root["f2"]))
    live.do(lambda root: corpus.resolve(root, "/f2").add("f1", root["f1"]))  # f1 under f2 as well
    live.settle()
    before = live.truth()
    gone, since = live.do(lambda root: ({truth.zoid(o) for o in corpus.subtree(root["f1"])}
                                        | {truth.zoid(o) for o in corpus.subtree(root["f2"])},
                                        root.pop("f1"), root.pop("f2"))[0])
    assert gone <= set(before)
    took = index.wait_gone(es, live.prefix, gone, since)
    print(f"\na cycle of {len(gone)} objects cut from the root: gone from search after {took:.2f} s")
    live.settle()


@pytest.mark.parametrize("keep_history", [False], ids=["history-free"])
def test_the_crash_guard_works_with_object_documents(keep_history, db_dsn, es, es_url, es_prefix, tmp_path):
    """After a death without a clean exit (ESINDEXER_CRASH_GUARD_AFTER=1), the next start
    converts the records in a child process: the index still becomes equal to the truth.
    (It used to fail: the child's conversions had no JSON for the object graph.)"""
    db = open_zodb(db_dsn, keep_history)
    built = corpus.build_corpus(db, items=200, infra_records=300, mimetypes=20)
    read_truth = lambda: truth.objects(db_dsn, keep_history)  # noqa: E731
    service = index.start_service(db_dsn, es_url, es_prefix, tmp_path, crash_guard_after="1")
    try:
        index.settle(es, es_prefix, read_truth, timeout=120)
        index.wait_ready(service)
        service.kill()
        conn = db.open()
        corpus.edit_body(conn.root(), built.item_paths[0], "<p>guarded words</p>")
        corpus.move(conn.root(), "/f1/sub/deep", "/f2")
        import transaction

        transaction.commit()
        conn.close()
        service = index.start_service(db_dsn, es_url, es_prefix, tmp_path, "guarded", crash_guard_after="1")
        wait_for(lambda: "guarded mode" in service.log() or service.proc.poll() is not None, timeout=60)
        index.settle(es, es_prefix, read_truth, timeout=60)
        assert service.proc.poll() is None, service.log()[-3000:]
    finally:
        db.close()
        if service.proc.poll() is None:
            index.wait_ready(service)
        code = service.stop()
    assert code == 0, service.log()[-3000:]


@pytest.mark.parametrize("keep_history", [False], ids=["history-free"])
def test_records_to_objects_by_a_reindex_behind_the_alias(keep_history, db_dsn, es, es_url, es_prefix):
    """The documented switch of an existing index: ``esindexer reindex --to`` with
    ``ESINDEXER_DOCUMENTS=objects`` builds the object documents beside the record documents
    and publishes them behind the alias; what the alias serves then equals the truth."""
    from tests.pipeline.processes import service_env

    db = open_zodb(db_dsn, keep_history)
    corpus.build_corpus(db, items=200, infra_records=300, mimetypes=20)
    db.close()
    alias = es_prefix.rstrip("-")
    env = {k: v for k, v in service_env(db_dsn, es_url, f"{alias}-gen1-", ALIAS=alias, CLIENT_ID=f"{alias}-gen1",
                                         ES_REQUEST_TIMEOUT="60").items() if k.startswith("ESINDEXER_")}
    done = run_esindexer("run", "--until-caught-up", env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = es.count(index=alias)["count"]
    done = run_esindexer("reindex", "--to", f"{alias}-gen2", env={**env, "ESINDEXER_DOCUMENTS": "objects"},
                         timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = truth.objects(db_dsn, keep_history)
    served = index.documents(es, es_prefix, pattern=alias)
    print(f"\nrecords mode: {records} documents; objects mode behind the alias: {len(served)}")
    truth.assert_same(index.expected(found), index.actual(served, found), "what the alias serves")


@pytest.mark.parametrize("routes", ["", "tests.objects.app.Tool=tools"], ids=["one-index", "tools-routed"])
@pytest.mark.parametrize("keep_history", [False], ids=["history-free"])
def test_tools_in_the_tree_and_the_items_field_budget(routes, keep_history, db_dsn, es, es_url, es_prefix):
    """Three tools *in the tree* (objects under the default ESINDEXER_OBJECT_CLASSES=*) whose
    attribute parts bring 1,200 distinct typed fields, written before the content: in one
    index they use up its 1,000 fields and items lose fields, which ``status`` reports (never
    silent); routed to an index of their own (the documented remedy), no item loses any."""
    import transaction

    from tests.objects.app import Folder, Tool
    from tests.pipeline.processes import service_env

    db = open_zodb(db_dsn, keep_history)
    conn = db.open()
    conn.root()["tools"] = tools = Folder("tools")
    for t in range(3):
        tools.add(f"tool-{t}", Tool(f"tool-{t}", t * 100, 100))
    transaction.commit()
    conn.close()
    corpus.build_corpus(db, items=300, infra_records=300, mimetypes=20)
    db.close()
    extra = {"CLASS_ROUTES": routes} if routes else {}
    env = {k: v for k, v in service_env(db_dsn, es_url, es_prefix, DOCUMENTS="objects", **extra).items()
           if k.startswith("ESINDEXER_")}
    done = run_esindexer("run", "--until-caught-up", env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = truth.objects(db_dsn, keep_history)
    truth.assert_same(index.expected(found), index.actual(index.documents(es, es_prefix), found))

    def count(*filters):
        return es.count(index=f"{es_prefix}*", query={"bool": {"filter": list(filters)}})["count"]

    lost = count({"term": {"class": index.ITEM}}, {"exists": {"field": "_ignored"}})
    print(f"\n{routes or 'one index'}: {lost} of 300 items with fields not indexed")
    status = run_esindexer("status", env=env).stdout
    line = next(line for line in status.splitlines() if line.startswith("unmapped fields"))
    if lost:
        assert "WARNING" in line and "state." in line, line
    if routes:
        assert lost == 0, line


@pytest.mark.parametrize("keep_history", [False], ids=["history-free"])
def test_a_tool_named_by_its_container_has_its_name_in_its_document(live):
    [tool] = [o for o in live.truth().values() if o.path == "/a1/portal_catalog"]
    doc = live.docs()[tool.zoid]
    assert doc["path"] == "/a1/portal_catalog"
    assert doc.get("name") == "portal_catalog", {k: doc.get(k) for k in ("name", "path", "class")}
