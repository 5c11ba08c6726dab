"""Reading back what the index holds (``esindexer.source.deletions.indexed_zoids``), on a real node.

The capture trigger and the draining of pack deletions are exercised end to end in
``tests/pipeline/test_indexer.py``; this covers the paging the start-up sweep and ``verify`` rely on.
"""

from __future__ import annotations

from esindexer.es.scan import indexed_zoids


def test_copies_of_a_zoid_in_two_indices_are_all_returned_across_page_boundaries(es, es_prefix):
    indices = (f"{es_prefix}a", f"{es_prefix}b")
    for index in indices:
        for zoid in range(1, 6):
            es.index(index=index, id=str(zoid), document={"zoid": zoid, "tid": 1000})
    es.indices.refresh(index=",".join(indices))

    pages = list(indexed_zoids(es, indices, page=1))  # every boundary falls between two copies

    seen = [row for page in pages for row in page]
    assert sorted(seen) == sorted((index, zoid, 1000) for index in indices for zoid in range(1, 6))
    assert [zoid for _, zoid, _ in seen] == sorted(zoid for _, zoid, _ in seen)
    assert list(indexed_zoids(es, indices, page=3, low=2, high=3)) == [
        [(indices[0], 2, 1000), (indices[1], 2, 1000), (indices[0], 3, 1000)], [(indices[1], 3, 1000)]]
