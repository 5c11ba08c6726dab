"""Every command example in README.md and docs/*.md runs as documented, or is listed here as
not runnable on this machine, with the reason.

Issue 26.8: the docs had drifted (a ``status`` sample without the lines it now prints, exit
codes and paths that were no longer true). This walks the fenced ``bash``/``console``
blocks (and the bare ones whose lines start with ``$ ``), runs each command against the
test servers — a fresh database with a few indexed objects, the test's index prefix in
place of ``zodb`` — and checks the exit code and the shape of the output the docs show:
for ``key  value`` outputs the keys (all of them, in order, for ``status``; for other
commands, keys the docs use for that command), for JSON the top-level keys, otherwise
the fixed start of the first line. A bash block shows no output: its commands must exit
0, a service (``esindexer run``) must still run after a few seconds and exit 0 on SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg2.extensions import parse_dsn

from tests.indexing import commit_pages
from tests.support import run_esindexer

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: Commands that cannot run here, by a pattern of the command, and why (checked elsewhere).
NOT_HERE: list[tuple[str, str]] = [
    (r"^docker ", "no Docker engine here; the compose files are checked offline by tests/test_deploy.py"),
    (r"^cp \.env\.example \.env", "prepares `docker compose up` (no Docker engine here)"),
    (r"^scripts/demo$", "runs until Ctrl-C; tests/test_demo.py runs it with its own database, prefix and port"),
    (r"^scripts/test", "the test suite itself"),
    (r"^pip install \.", "would change this virtualenv; tests/cli/test_about.py builds and inspects the wheel"),
    (r"^export ESINDEXER_", "placeholder servers (db.example, es.example); the walk sets these to the test servers"),
    (r"^ESINDEXER_[A-Z_]+=\S+$", "a line of an environment file (deploy.md), not a command"),
    (r"^(useradd|install |editor |systemctl |journalctl )", "changes the machine (users, /etc) and needs "
                                                            "systemd as PID 1; tests/test_systemd.py verifies the units"),
    (r"^python3 -m venv /opt/esindexer", "installs into /opt; tests/test_systemd.py verifies the units against "
                                         "a virtualenv of the same layout"),
    (r"^systemd-analyze ", "needs esindexer installed in /opt/esindexer; tests/test_systemd.py runs both with this "
                           "virtualenv in its place"),
    (r"^echo \$\?$", "the exit code of the previous (skipped) command"),
    (r"bench/(?!client\.py)", "a benchmark of minutes; its measured figures are what the page documents"),
    (r"plone-big|esplone_big", "a benchmark on a Plone site of 1,500 items (minutes to build); its measured figures "
                               "are what the page documents; tests/plone builds and indexes a smaller site"),
    (r"127\.0\.0\.1:9650", "asks the running demo (scripts/demo); tests/test_demo.py checks its /readyz"),
    (r"esindexer_demo", "the demo's own database (tests/test_demo.py runs the demo with one of its own)"),
    (r"^curl -X DELETE '127\.0\.0\.1:9200/(zodb-objects|_index_template/zodb-esindexer)'",
     "deletes the demo's indices on the shared server"),
    (r"writer\.py --dsn \.\.\. --interval 2", "writes for ever (the demo's writer); the bounded forms below run"),
    (r"my\.site\.search", "the Plone guide's example of a user's own transform module (docs/plone.md); "
                          "tests/transforms/test_plone_object_transform.py runs the shipped transform"),
    (r"zodb-enrich", "the test Elasticsearch (the integ-test-zip) has no ingest-common module, so no `set` "
                     "processor; tests/pipeline/test_indexer.py::test_ingest_pipeline_is_checked_at_start_and_applied_to_every_index "
                     "runs the setting with a pipeline this server has"),
]


@dataclass
class Example:
    """One command of the docs: where it is, what it is, and what the docs show of its result."""

    where: str
    command: str
    output: list[str]
    shows_output: bool  # a console block (output shown) rather than a bash block (none shown)

    def __str__(self) -> str:
        return f"{self.where}: {self.command}"


def examples() -> list[Example]:
    found: list[Example] = []
    for path in DOCS:
        text = path.read_text()
        for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S):
            lang, body = block.group(1), block.group(2)
            line = text[:block.start()].count("\n") + 2
            where = f"{path.relative_to(REPO)}:{line}"
            lines = body.splitlines()
            if lang == "bash":
                for command in _commands(re.sub(r"\\\n\s*", "", body)):
                    found.append(Example(where, command, [], False))
            elif lang in ("console", "") and any(x.startswith("$ ") for x in lines):
                current: Example | None = None
                for x in lines:
                    if x.startswith("$ "):
                        command = re.sub(r"\s+#\s.*$", "", x[2:]).strip()
                        current = Example(where, command, [], True)
                        found.append(current)
                    elif current is not None:
                        current.output.append(x)
    return found


def _commands(script: str) -> list[str]:
    """The commands of a bash block: one a line, or more while a quote is open."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # "No closing quotation": the command goes on
            continue
        command = re.sub(r"\s+#\s[^'\"]*$", "", pending).strip()
        pending = ""
        if command and not command.startswith("#"):
            out.append(command)
    return out


EXAMPLES = examples()


def skip_reason(command: str) -> str | None:
    return next((reason for pattern, reason in NOT_HERE if re.search(pattern, command)), None)


def keys(lines: list[str]) -> list[str]:
    """The left column of ``key  value`` lines, up to the first blank line."""
    out = []
    for x in lines:
        if not x.strip():
            break
        match = re.match(r"^(\S(?:\S| (?! ))*)\s{2,}\S", x)
        if match:
            out.append(match.group(1))
    return out


def vocabulary(subcommand: str) -> set[str]:
    """Every key the docs show in outputs of ``esindexer SUBCOMMAND``."""
    return {k for e in EXAMPLES if e.command.split()[:2] == ["esindexer", subcommand] for k in keys(e.output)}


@pytest.fixture(scope="module")
def servers(request, tmp_path_factory):
    """A database with a few indexed objects, and the environment every command runs in."""
    pg_dsn = request.getfixturevalue("pg_dsn")
    es_url = request.getfixturevalue("es_url")
    from tests.support import fresh_database, open_zodb

    with fresh_database(pg_dsn) as dsn:
        db = open_zodb(dsn, False)
        conn = db.open()
        commit_pages(conn.root(), 5)
        conn.close()
        db.close()
        prefix = f"t-docs-walk-{os.getpid()}"
        bin_dir = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESINDEXER_")}
        env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", ESINDEXER_PG_DSN=dsn, ESINDEXER_ES_URL=es_url,
                   ESINDEXER_INDEX_PREFIX=prefix, ESINDEXER_INDEX_REPLICAS="0", ESINDEXER_METRICS_PORT="0",
                   ESINDEXER_POLL_TIMEOUT="1", ES=es_url)
        done = run_esindexer("run", "--until-caught-up", env=env)
        assert done.returncode == 0, done.stderr
        yield env, dsn, prefix
        es = request.getfixturevalue("es_session_client")
        es.options(ignore_status=404).indices.delete(index=f"{prefix}*", expand_wildcards="all",
                                                      allow_no_indices=True)
        es.options(ignore_status=404).indices.delete_index_template(name=f"{prefix}*")
        es.options(ignore_status=404).ingest.delete_pipeline(id="zodb-enrich")


def localise(command: str, dsn: str, prefix: str, number: int) -> str:
    """The command aimed at the test servers: their DSN, the test's prefix for ``zodb``."""
    user = parse_dsn(dsn)["user"]
    command = re.sub(r"postgresql://\S+@(db|127\.0\.0\.1:5432)/zodb\b", dsn, command)
    command = command.replace("--dsn ...", f"--dsn {dsn}").replace("--grant-to ROLE", f"--grant-to {user}")
    command = command.replace("--grant-to esindexer", f"--grant-to {user}")
    command = re.sub(r"\bzodb-v2\b", f"{prefix}-v{number}", command)  # a generation of its own
    if re.search(r"\bESINDEXER_PROFILE=plone\b", command):
        # object documents (docs/plone.md): a generation and a client id of their own, since the
        # walk's index holds record documents (a service refuses to mix the two)
        command = f"ESINDEXER_INDEX_PREFIX={prefix}-v{number} ESINDEXER_CLIENT_ID=walk-v{number} {command}"
    if re.search(r"\besindexer reindex --to\b", command):
        # ... behind an alias of its own: the walk's later commands keep their generation served
        command = f"ESINDEXER_ALIAS={prefix}-v{number}-alias {command}"
    return command


def expected_code(example: Example) -> set[int]:
    if example.output and (match := re.fullmatch(r"exit (\d+)", example.output[-1].strip())):
        return {int(match.group(1))}
    if "--redeliver" in example.command:
        return {0, 1}  # docs/operations.md: 1 when some objects still fail
    return {0}


@pytest.mark.parametrize("example", EXAMPLES, ids=[str(e) for e in EXAMPLES])
def test_a_documented_command_runs_as_documented(example: Example, servers) -> None:
    if (reason := skip_reason(example.command)) is not None:
        pytest.skip(reason)
    env, dsn, prefix = servers
    command = localise(example.command, dsn, prefix, EXAMPLES.index(example) + 2)
    if re.fullmatch(r"(ESINDEXER_\w+=\S+ )*esindexer run", command):
        _runs_until_stopped(command, env)
        return
    command = command.removesuffix("; echo exit $?")  # the docs' way of showing the exit code
    done = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    # esindexer's one-line errors are on stderr, and the docs show them; another tool's
    # warnings on stderr are not part of what the docs show.
    output = (done.stdout + (done.stderr if command.startswith("esindexer") else "")).splitlines()
    code = done.returncode
    assert code in expected_code(example), f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if example.shows_output:
        _same_shape(example, output)


def _runs_until_stopped(command: str, env: dict[str, str]) -> None:
    proc = subprocess.Popen(["bash", "-c", f"exec env {command}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]


def _same_shape(example: Example, output: list[str]) -> None:
    shown = [x for x in example.output if not re.fullmatch(r"exit \d+", x.strip())]
    words = example.command.split()
    if words[0] != "esindexer":  # another tool (amtool): its output is fixed, as the docs show it
        assert [x.rstrip() for x in output if x.strip()] == [x.rstrip() for x in shown if x.strip()], output
    elif shown and shown[0].lstrip().startswith("{"):
        documented = json.loads("\n".join(shown))
        actual = json.loads("\n".join(output))
        assert set(actual) == set(documented), (set(actual) ^ set(documented))
    elif keys(shown):
        actual = keys(output)
        assert actual and actual[0] == keys(shown)[0], output
        if words[:2] == ["esindexer", "status"]:
            assert actual == keys(shown), f"documented {keys(shown)}\nprinted {actual}"
        else:
            assert set(actual) <= vocabulary(words[1]), set(actual) - vocabulary(words[1])
    elif shown:
        fixed = re.split(r"[\d'\"(]", shown[0], maxsplit=1)[0]
        assert output and output[0].startswith(fixed), f"documented {shown[0]!r}\nprinted {output[:3]}"


def test_the_walk_finds_the_examples_and_every_skip_is_used() -> None:
    """The parser sees the blocks (a renamed fence would make the walk vacuous), and no
    entry of NOT_HERE is stale."""
    commands = [e.command for e in EXAMPLES]
    assert len(EXAMPLES) > 60 and "esindexer status --json" in commands
    assert sum(1 for e in EXAMPLES if skip_reason(e.command) is None) > 25
    for pattern, reason in NOT_HERE:
        assert any(re.search(pattern, c) for c in commands), f"stale entry {pattern!r}: {reason}"


def test_every_status_sample_has_the_lines_status_prints(servers) -> None:
    """Also the samples shown without their command (docs/quickstart.md's, after the demo's
    commands): issue 26.8 found one without the partition lines."""
    env, _, _ = servers
    done = subprocess.run(["esindexer", "status"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    printed = keys(done.stdout.splitlines())
    samples = 0
    for path in DOCS:
        for block in re.finditer(r"^```\w*\n(client id .*?)^```", path.read_text(), re.M | re.S):
            samples += 1
            assert keys(block.group(1).splitlines()) == printed, path
    assert samples >= 1
