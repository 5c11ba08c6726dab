"""The e2e test's own instruments, checked without the object model: a hand-made index of
the documents the spec describes, written from the truth, must compare equal to the truth
and answer every Kibana query exactly; a wrong document must show up in a short diff."""

from __future__ import annotations

from tests.objects import corpus, index, truth
from tests.objects.app import WORKFLOW


def spec_document(o: truth.Obj, raw: str | None) -> dict:
    """An object document as docs/objects-spec describes it (only what the tests read)."""
    doc = {"class": o.cls, "zoid": o.zoid, "path": o.path, "parent": o.parent, "depth": o.depth,
           "ancestors": list(o.ancestors), "parts": sorted(o.parts), "state": {}}
    if o.depth:
        doc["name"] = o.name
    if o.title is not None:
        doc["state"]["title"] = o.title
    if o.created is not None:
        doc["state"]["created"] = o.created.isoformat()
        doc["state"][f"history.data.{WORKFLOW}.review_state"] = list(o.states)
        doc["state"]["body._holder.raw"] = raw
        doc["state"]["tags"] = list(o.tags)
        doc["text"] = f"{o.title} {raw}"
        doc["tid"], doc["parts_tid"] = o.tid, o.parts_tid
        doc["committed_at"] = index.tid_time(max(o.tid, o.parts_tid)).isoformat().replace("+00:00", "Z")
    return doc


MAPPING = {"properties": {
    "class": {"type": "keyword"}, "path": {"type": "keyword"}, "ancestors": {"type": "keyword"},
    "name": {"type": "keyword"}, "parent": {"type": "long"}, "depth": {"type": "integer"},
    "parts": {"type": "long"}, "text": {"type": "text"},
    "state": {"properties": {"title": {"type": "text", "fields": {"keyword": {"type": "keyword"}}},
                             "created": {"type": "date"}}}}}


def test_a_perfect_index_equals_the_truth_and_answers_every_query(zodb, db_dsn, es, es_prefix):
    corpus.build_corpus(zodb, items=600, infra_records=300, mimetypes=20)
    found = truth.objects(db_dsn, False)
    conn = zodb.open()
    raws = {z: conn.get(z.to_bytes(8, "big")).body.raw for z, o in found.items() if o.created is not None}
    conn.close()
    name = f"{es_prefix}objects"
    es.indices.create(index=name, mappings=MAPPING)
    operations = []
    for z, o in found.items():
        operations += [{"index": {"_index": name, "_id": str(z)}}, spec_document(o, raws.get(z))]
    assert not es.bulk(operations=operations, refresh=True)["errors"]

    assert truth.compare(index.expected(found), index.actual(index.documents(es, es_prefix), found)) == []
    index.check_queries(es, es_prefix, found)

    # A wrong path, a lost part and a missing document: a short diff names them.
    some = sorted(z for z, o in found.items() if o.cls == index.ITEM)[:3]
    es.update(index=name, id=str(some[0]), doc={"path": "/elsewhere"})
    es.update(index=name, id=str(some[1]), doc={"parts": []})
    es.delete(index=name, id=str(some[2]))
    diff = truth.compare(index.expected(found), index.actual(index.documents(es, es_prefix), found))
    assert diff[0] == "1 missing, 0 unexpected, 2 differing", diff
    assert any(line.startswith(f"{some[0]} path: expected") for line in diff), diff
    assert any(line.startswith(f"{some[1]} known_parts") for line in diff), diff
    assert len(truth.compare({n: {"a": 1} for n in range(50)}, {})) == 12  # summary, 10 lines, "and 40 more"
