"""Hostile records: nothing named in a pickle runs, and bad input stays cheap.

Decision (docs/json.md): a REDUCE of any callable, dangerous or not, is converted to an
inert description (``{"::": "posix.system", "::()": [...]}``), exactly the shape newt.db
gives an unknown class; no module is imported and nothing is called. Malformed or
oversized input gives ``kind == 'error'`` with a reason, within bounded memory and time.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esindexer.convert.jsonifier import Jsonifier
from esindexer.convert.scan import MAX_DEPTH
from esindexer.convert.values import standin
from tests.convert.records import (
    DEEP_KINDS,
    PRef,
    Thing,
    deep_json,
    deep_value,
    record,
    scan_depth,
    strict_loads,
)

CLASS = b"\x80\x03ctests.convert.records\nThing\nq\x00N\x86q\x01."


def reduce_call(module: str, name: str, *args: str) -> bytes:
    """A state pickle ``{'x': module.name(*args)}`` (protocol 3)."""
    body = b"".join(b"X" + struct.pack("<I", len(a.encode())) + a.encode() for a in args)
    return (
        b"\x80\x03}q\x02X\x01\x00\x00\x00x"
        + f"c{module}\n{name}\n".encode()
        + b"(" + body + b"tR"
        + b"s."
    )


@pytest.mark.parametrize("module,name,args", [
    ("os", "system", ("touch {marker}",)),
    ("posix", "system", ("touch {marker}",)),
    ("subprocess", "Popen", ("touch {marker}",)),
    ("subprocess", "check_call", ("touch {marker}",)),
    ("builtins", "eval", ("open({marker!r}, 'w')",)),
    ("builtins", "exec", ("open({marker!r}, 'w')",)),
    ("__builtin__", "eval", ("open({marker!r}, 'w')",)),
    ("builtins", "__import__", ("antigravity",)),
    ("builtins", "open", ("{marker}", "w")),
    ("importlib", "import_module", ("this",)),
    ("esindexer_test_never_imported", "boom", ()),
])
def test_reduce_of_dangerous_callables_runs_nothing(tmp_path, module, name, args):
    marker = str(tmp_path / "ran")
    args = tuple(a.format(marker=marker) for a in args)
    modules_before = set(sys.modules)
    c = Jsonifier().convert("hostile", CLASS + reduce_call(module, name, *args))
    assert c.kind == "ok", c
    assert strict_loads(c.json_text) == {"x": {"::": f"{module}.{name}", **({"::()": list(args)} if args else {})}}
    assert not os.path.exists(marker)
    assert set(sys.modules) - modules_before == set()


def test_getattr_chains_and_newobj_stay_inert(tmp_path):
    marker = str(tmp_path / "ran")
    # builtins.getattr(builtins.__import__('os'), 'system')('touch marker'): REDUCE of a REDUCE result
    state = (
        b"\x80\x03}q\x02X\x01\x00\x00\x00x"
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(X\x02\x00\x00\x00ostRX\x06\x00\x00\x00systemtR"
        b"(X" + struct.pack("<I", len(marker) + 6) + b"touch " + marker.encode() + b"tR"
        b"s."
    )
    c = Jsonifier().convert("hostile", CLASS + state)
    assert c.kind == "error"  # the getattr description is a dict: calling it fails
    assert "not callable" in c.error
    assert not os.path.exists(marker)
    # NEWOBJ / NEWOBJ_EX / INST / OBJ of a dangerous class: descriptions, nothing runs
    for ops in (b"cos\nsystem\n)\x81", b"cos\nsystem\n)}\x92", b"(X\x02\x00\x00\x00hiios\nsystem\n",
                b"(cos\nsystem\nX\x02\x00\x00\x00hio"):
        c = Jsonifier().convert("hostile", CLASS + b"\x80\x03}q\x02X\x01\x00\x00\x00x" + ops + b"s.")
        assert c.kind == "ok", (ops, c)
        assert strict_loads(c.json_text)["x"]["::"] == "os.system"


def test_build_cannot_modify_a_cached_stand_in():
    before = standin("os", "system").dotted
    state = b"\x80\x03}q\x02X\x01\x00\x00\x00xcos\nsystem\nN}X\x06\x00\x00\x00dottedX\x01\x00\x00\x00!s\x86bs."
    c = Jsonifier().convert("hostile", CLASS + state)
    assert c.kind == "error"
    assert standin("os", "system").dotted == before == "os.system"


def test_extension_codes_are_not_resolved():
    c = Jsonifier().convert("hostile", CLASS + b"\x80\x03}q\x02X\x01\x00\x00\x00x\x82\x01s.")
    assert c.kind == "error"


# --------------------------------------------------------------------------------------
# resource bounds
# --------------------------------------------------------------------------------------


def _bounded(data: bytes, max_bytes: int = 20_000_000):
    """Convert under tracemalloc; assert the peak stays small; return the Conversion."""
    tracemalloc.start()
    try:
        c = Jsonifier().convert("hostile", data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < max_bytes, (peak, c)
    return c


@pytest.mark.parametrize("index", [0x100, 0x10000, 0x00100000, 0x04000000, 0x10000000, 0x7FFFFFFF, 0xFFFFFFFF])
def test_huge_memo_indexes_are_refused_before_allocating(index):
    # LONG_BINPUT with a huge index: the C unpickler would allocate 16 * index bytes
    state = b"\x80\x03}r" + struct.pack("<I", index) + b"."
    c = _bounded(CLASS + state)
    if index <= 0x10000:
        assert c.kind == "error" or c.kind == "ok"
    else:
        assert c.kind == "error" and "memo index" in c.error
    text = b"\x80\x02}p" + str(index).encode() + b"\n."
    c = _bounded(CLASS + text)
    if index > 0x10000:
        assert c.kind == "error" and "memo index" in c.error


_LENGTH_CASES = [
    (op, fmt, size)
    for op, fmt, sizes in [
        (b"X", "<I", (2**31, 2**32 - 1)), (b"B", "<I", (2**31, 2**32 - 1)),
        (b"T", "<i", (2**31 - 1,)), (b"\x8b", "<i", (2**31 - 1,)),
        (b"\x8d", "<Q", (2**40, 2**64 - 1)), (b"\x8e", "<Q", (2**40, 2**64 - 1)),
        (b"\x96", "<Q", (2**40, 2**64 - 1)),
    ]
    for size in sizes
]


@pytest.mark.parametrize("op,fmt,size", _LENGTH_CASES)
def test_huge_length_prefixes(op, fmt, size):
    c = _bounded(CLASS + b"\x80\x03}X\x01\x00\x00\x00x" + op + struct.pack(fmt, size) + b"abc" + b"s.")
    assert c.kind == "error" and "truncated" in c.error


def test_deep_nesting_is_an_error_not_a_crash():
    depth = 100_000
    state = b"\x80\x03" + b"]" * depth + b"a" * (depth - 1) + b"."
    c = _bounded(CLASS + state, 60_000_000)
    assert c.kind == "error" and ("deeper" in c.error or "Recursion" in c.error)
    # moderately deep (beyond orjson's own limit) still converts
    state = b"\x80\x03" + b"]" * 150 + b"a" * 149 + b"."
    c = Jsonifier().convert("deep", CLASS + state)
    assert c.kind == "ok"
    assert c.json_text == "[" * 150 + "]" * 150


# Deep nesting, converted in a child process: orjson corrupts memory on tuples nested a
# few thousand deep and tuple hashing overflows the C stack, so an unbounded conversion
# kills the process (SIGSEGV/SIGABRT) instead of failing a test.

_DEEP_CHILD = r"""
import json, sys
from esindexer.convert.walk import json_ready
from esindexer.convert.jsonifier import Jsonifier, _new_unpickler
from tests.convert.records import deep_record

kind, depths, protocols = json.loads(sys.argv[1])

def emit(**fields):
    print(json.dumps(fields), flush=True)

records = {(d, p): deep_record(kind, d, p) for d in depths for p in protocols}
emit(built=len(records))  # the conversions run with the default stack and recursion limit

for (depth, protocol), data in sorted(records.items()):
    emit(start="convert", depth=depth, protocol=protocol, size=len(data))
    for prescan in (True, False):
        c = Jsonifier(prescan=prescan).convert("deep", data)
        emit(depth=depth, protocol=protocol, prescan=prescan, kind=c.kind, error=c.error)
    emit(depth=depth, protocol=protocol, call=[x is None for x in Jsonifier()("deep", data)])
for (depth, protocol), data in sorted(records.items()):
    # the walker alone, on the value as the unpickler builds it (no pre-scan)
    emit(start="walk", depth=depth, protocol=protocol)
    unpickler, source = _new_unpickler()
    source.data = data
    unpickler.load()
    state = unpickler.load()
    try:
        json_ready(state)
        emit(depth=depth, protocol=protocol, walk="ok")
    except ValueError as exc:
        emit(depth=depth, protocol=protocol, walk=str(exc))
emit(done=True)
"""


def _deep_in_child(kind: str, depths: list[int], protocols: list[int]) -> list[dict]:
    """Run _DEEP_CHILD; assert it exited normally; return its report lines."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", _DEEP_CHILD, json.dumps([kind, depths, protocols])],
                          cwd=root, capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, (
        f"child died with status {proc.returncode} after {lines[-1:]}: {proc.stderr[-3000:]}")
    assert lines[0] == {"built": len(depths) * len(protocols)} and lines[-1] == {"done": True}
    return lines


@pytest.mark.parametrize("kind", DEEP_KINDS)
def test_deep_nesting_of_every_kind_is_an_error_in_a_child_process(kind):
    """1,000 to 100,000 levels, protocols 1-5 (and 0 for some kinds), written by ZODB's
    pickler (zodbpickle, protocols 0-3) or the stdlib's (4-5): every conversion ends as
    kind 'error' with the depth reason, the call gives newt.db's three Nones, the walker
    refuses the unpickled value itself (unpickled without the pre-scan), and the process
    survives."""
    protocols = list(range(0 if kind in ("tuple", "list", "dict", "mixed") else 1, 6))
    depths = [1_000, 5_000, 20_000, 100_000]
    lines = _deep_in_child(kind, depths, protocols)
    reason = f"nesting deeper than {MAX_DEPTH} levels"
    conversions = [line for line in lines if "prescan" in line]
    assert len(conversions) == 2 * len(depths) * len(protocols)
    for line in conversions:
        assert line["kind"] == "error" and reason in line["error"], line
    calls = [line for line in lines if "call" in line]
    assert len(calls) == len(depths) * len(protocols)
    assert all(line["call"] == [True, True, True] for line in calls)
    walks = [line for line in lines if "walk" in line]
    assert [line["walk"] for line in walks] == [reason] * len(depths) * len(protocols)


@pytest.mark.parametrize("kind", DEEP_KINDS)
@pytest.mark.parametrize("protocol", range(0, 6))
def test_nesting_at_the_limit_converts_and_one_more_level_does_not(kind, protocol):
    """The deepest value of each kind that the pre-scan accepts (200 levels of tuples,
    lists or dicts; an instance counts two; a set three below protocol 4) converts to the
    same JSON as ever, with or without prescan; one level more is refused."""
    levels = 1
    while scan_depth(deep_value(kind, levels + 1), protocol) <= MAX_DEPTH:
        levels += 1
    data = record(Thing, deep_value(kind, levels), protocol)
    c = Jsonifier().convert("deep", data)
    assert c.kind == "ok", (levels, c)
    assert json.loads(c.json_text) == deep_json(kind, levels)
    assert Jsonifier(prescan=False).convert("deep", data) == c
    if kind in ("tuple", "list", "dict") or (kind == "frozenset" and protocol >= 4):
        assert levels == MAX_DEPTH  # counted exactly: one level per container
    c = Jsonifier().convert("deep", record(Thing, deep_value(kind, levels + 1), protocol))
    assert c.kind == "error" and f"nesting deeper than {MAX_DEPTH} levels" in c.error, c


def test_exponential_sharing_hits_the_budget():
    # L0 = []; L(n+1) = [Ln, Ln] via BINGET: 60 levels would expand to 2**60 nodes
    ops = [b"\x80\x03]q\x00"]
    for n in range(1, 61):
        ops.append(b"]q" + bytes([n]) + b"(h" + bytes([n - 1]) + b"h" + bytes([n - 1]) + b"e")
    ops.append(b".")
    c = _bounded(CLASS + b"".join(ops))
    assert c.kind == "error" and "budget" in c.error
    # the same with DUP (no memo at all)
    state = b"\x80\x03]" + b"2\x86" * 60 + b"."
    c = _bounded(CLASS + state)
    assert c.kind == "error" and "budget" in c.error


def test_repeated_big_string_hits_the_budget():
    big = b"x" * 1_000_000
    state = (b"\x80\x03]q\x02(X" + struct.pack("<I", len(big)) + big + b"q\x03"
             + b"h\x03" * 200_000 + b"e.")
    c = _bounded(CLASS + state, 60_000_000)
    assert c.kind == "error" and "budget" in c.error


def test_unknown_opcodes_and_protocols():
    for state in (b"\x80\x03\xff.", b"\x80\x09}.", b"\x80\x03\x97.", b"\x80\x03\x98."):
        assert Jsonifier().convert("x", CLASS + state).kind == "error"


# --------------------------------------------------------------------------------------
# fuzzing
# --------------------------------------------------------------------------------------

_SEED_RECORDS = [
    record(Thing, {"a": [1, 2.5, "s", b"\xff", (1, 2)], "r": PRef(3, Thing), "n": None}),
    record(Thing, {"d": {"k": {1, 2}}, "t": Thing(x=[1])}, protocol=1),
    record(Thing, {"x": 2**80, "s": "é😀"}, protocol=2),
    record(Thing, {"x": [[[]]]}, protocol=4),
]


def test_every_truncation_and_byte_flip_of_real_records():
    j = Jsonifier()
    for data in _SEED_RECORDS:
        for cut in range(len(data)):
            c = j.convert("fuzz", data[:cut])
            assert c.kind in ("error", "deleted", "skipped", "ok")
        for pos in range(len(data)):
            for flip in (0x01, 0x80, 0xFF):
                mutated = data[:pos] + bytes([data[pos] ^ flip]) + data[pos + 1:]
                c = j.convert("fuzz", mutated)
                assert c.kind in ("error", "skipped", "ok")
                if c.kind == "ok":
                    strict_loads(c.json_text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data):
    c = Jsonifier().convert("fuzz", data)
    assert c.kind in ("error", "deleted", "ok", "skipped")
    if c.kind == "ok":
        strict_loads(c.json_text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_SEED_RECORDS), st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=6)),
                                                 max_size=4))
def test_spliced_records_never_raise(data, edits):
    buf = bytearray(data)
    for pos, chunk in edits:
        pos %= len(buf) + 1
        buf[pos:pos + len(chunk)] = chunk
    c = Jsonifier().convert("fuzz", bytes(buf))
    assert c.kind in ("error", "ok", "skipped", "deleted")
    if c.kind == "ok":
        strict_loads(c.json_text)
