"""The Elasticsearch client's serializers (esindexer/es/client.py): a bulk body goes out as
it is, and every answer is read into exactly the values the standard library reads."""

from __future__ import annotations

import json
import math
import random

import pytest
from elasticsearch.serializer import NdjsonSerializer

from esindexer.es.client import _loads, _Ndjson, _serializers


def same(a: object, b: object) -> bool:
    """Equal, NaN included, and of the same types all the way down (1 is not 1.0)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]
    return a == b


EDGES = [
    b'{"errors":false,"items":[{"index":{"status":201}},{"index":{"status":409,"error":{"type":"x"}}}]}',
    b'{"big":123456789012345678901234567890,"neg":-98765432109876543210}',  # beyond 64 bits: exact ints
    b'{"u64":18446744073709551615,"i64":-9223372036854775808,"tid":292036783585787067}',
    b'{"digits in a string":"12345678901234567890123"}',
    b'{"lone":"\\ud800","pair":"\\ud83d\\ude00"}',
    b'{"x":NaN,"y":Infinity,"z":-Infinity}',
    b'{"over":1e400,"under":1e-400,"tiny":5e-324}',
    b'{"k":1,"k":2}',
    b'[1.5e-7,0.1,-0.0,0,-0,1E5,2.5e+3]',
    b'{"nested":{"a":[{"b":[true,false,null]}]},"empty":{},"e":[]}',
    b'"just a string"',
]


@pytest.mark.parametrize("data", EDGES)
def test_answers_read_as_the_standard_library_reads_them(data):
    assert same(_loads(data), json.loads(data))


def test_generated_answers_read_as_the_standard_library_reads_them():
    rng = random.Random(25)

    def value(depth: int) -> object:
        kind = rng.randrange(9 if depth < 4 else 6)
        if kind == 0:
            return rng.choice([0, 1, -1, 2**53, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**64), 10**30, 10**19])
        if kind == 1:
            return rng.choice([0.0, -0.0, 0.1, 1e-300, 1e300, 123456.789, float(2**70)])
        if kind == 2:
            return "".join(rng.choice("ab 0123456789é\u2028\U0001f600\"\\\n") for _ in range(rng.randrange(30)))
        if kind == 3:
            return rng.choice([True, False, None])
        if kind == 4:
            return str(rng.randrange(10**25))
        if kind == 5:
            return rng.randrange(-(10**22), 10**22)
        if kind == 6:
            return [value(depth + 1) for _ in range(rng.randrange(5))]
        return {f"k{rng.randrange(50)}": value(depth + 1) for _ in range(rng.randrange(5))}

    for _ in range(500):
        data = json.dumps(value(0), ensure_ascii=rng.random() < 0.5).encode()
        assert same(_loads(data), json.loads(data)), data


def test_a_bulk_body_is_sent_as_it_is():
    body = b'{"index":{"_index":"x","_id":"1","version":5,"version_type":"external_gte"}}\n{"a":1}\n'
    assert _Ndjson().dumps(body) is body
    client = NdjsonSerializer()
    for other in ([{"index": {}}, {"a": 1}], b'{"a":1}', '{"a":1}\n', [b'{"a":1}', '{"b":2}\n']):
        assert _Ndjson().dumps(other) == client.dumps(other)  # anything else: as the client would


def test_the_client_is_given_both():
    serializers = _serializers()
    assert set(serializers) == {"application/json", "application/x-ndjson"}
    assert same(serializers["application/json"].loads(b'{"a":[1,2.5]}'), {"a": [1, 2.5]})
    assert serializers["application/x-ndjson"].loads(b'{"a":1}\n{"b":2}\n') == [{"a": 1}, {"b": 2}]
