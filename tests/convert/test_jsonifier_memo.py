"""Records written the way ZODB writes them: one pickler, two dumps, the memo carried over.

ZODB's serializer pickles the class record and then the state with the *same* pickler,
so the state pickle may refer (``GET``) to values memoized by the class pickle, and with
protocols 4 and 5 (``MEMOIZE``) its memo indices continue from the class pickle's. A
reader that started the state pickle with a fresh memo would fail, or, in a record large
enough, resolve a continued index to a different entry and return a wrong value
silently. The reference here is how ZODB reads a record: one unpickler, two loads.
"""

from __future__ import annotations

import io
import json
import pickle

import pytest
from persistent.mapping import PersistentMapping

from esindexer.convert.jsonifier import Jsonifier, Kind

PROTOCOLS = [1, 2, 3, 4, 5]


def zodb_record(meta: object, state: object, protocol: int) -> bytes:
    """The class record then the state, from one pickler (as ZODB's ObjectWriter does)."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol)
    pickler.dump(meta)
    pickler.dump(state)
    return out.getvalue()


def zodb_read_state(record: bytes) -> object:
    """The state as ZODB reads it: one unpickler, the class record first."""
    unpickler = pickle.Unpickler(io.BytesIO(record))
    unpickler.load()
    return unpickler.load()


def as_json(value: object) -> object:
    """The JSON shape esindexer gives plain values (sets become sorted arrays)."""
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(as_json(v) for v in value)
    return value


def _shared_state(size: int) -> dict:
    words = [f"word-{n}" for n in range(size)]
    shared = ["a", "shared", "list"]
    return {
        "data": {
            "words": words,
            "again": list(reversed(words)),  # every word a second time: GETs of memoized strings
            "first": shared,
            "second": shared,  # a GET of a memoized container
            "tags": {"x", "y", "z"},
            "frozen": frozenset({1, 2}),
            "meta": ("persistent.mapping", "PersistentMapping"),  # the class record's strings again
        }
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("size", [3, 300, 3000], ids=["small", "300-words", "3000-words"])
def test_a_record_written_with_one_pickler_converts_as_zodb_reads_it(protocol, size):
    # The class record memoizes entries of its own (the class, newargs, their strings),
    # so every memo index of the state pickle is shifted by them.
    meta = (PersistentMapping, ("persistent.mapping", "PersistentMapping", "newarg"))
    state = _shared_state(size)
    record = zodb_record(meta, state, protocol)
    conversion = Jsonifier().convert("memo", record)
    assert conversion.kind is Kind.OK, conversion.error
    assert json.loads(conversion.json_text) == as_json(zodb_read_state(record))
    assert conversion.class_name == "persistent.mapping.PersistentMapping"


@pytest.mark.parametrize("protocol", [4, 5])
def test_a_continued_memo_index_never_names_another_entry(protocol):
    """Protocol 4+ numbers memo entries implicitly. Here the state pickle's own entries
    outnumber the class pickle's, so every continued index would also exist in a fresh
    memo, naming a different value: only a reader that carries the memo over gets each
    repeated value right."""
    meta = (PersistentMapping, tuple(f"class-arg-{n}" for n in range(50)))
    values = [f"value-{n}" for n in range(500)]
    state = {"data": {"values": values, "repeat": values[::-1], "pairs": [[v, v] for v in values]}}
    record = zodb_record(meta, state, protocol)
    expected = as_json(zodb_read_state(record))
    conversion = Jsonifier().convert("memo", record)
    assert conversion.kind is Kind.OK, conversion.error
    got = json.loads(conversion.json_text)
    assert got == expected
    assert got["data"]["repeat"][0] == "value-499" and got["data"]["pairs"][7] == ["value-7", "value-7"]


def test_one_jsonifier_converts_a_stream_of_records_of_every_protocol_as_zodb_reads_them():
    """The converter reuses its unpicklers between records. CPython's C unpickler numbers
    MEMOIZE entries from a count that clearing its memo does not reset, so a reused one
    read every protocol-4/5 record after the first with shifted indices ("Memo value not
    found", or silently another entry). Records of every protocol, interleaved, many
    times, each compared with a fresh ZODB-style read."""
    import random

    rng = random.Random(7)
    shared = ["s", "l"]
    records = []
    for protocol in PROTOCOLS:
        for n in range(4):
            state = {"data": {"set": {1, 2, n}, "fs": frozenset({"a"}), "l1": shared, "l2": shared,
                              "words": [f"w{k}" for k in range(n * 40)], "again": [f"w{k}" for k in range(n * 40)]}}
            records.append(zodb_record((PersistentMapping, None) if n % 2 else PersistentMapping, state, protocol))
    jsonifier = Jsonifier()
    for _ in range(5):
        rng.shuffle(records)
        for record in records:
            conversion = jsonifier.convert("stream", record)
            assert conversion.kind is Kind.OK, conversion.error
            assert json.loads(conversion.json_text) == as_json(zodb_read_state(record))
