"""Every setting, declared once: name, parser, default, meaning and group.

That one declaration drives the environment variable (``ESINDEXER_<NAME>``), the TOML
key (``name``), the CLI flag (``--name-with-dashes``), the default (also the library's:
:mod:`esindexer.source.follow` takes its keyword defaults from here), the validation in
:mod:`esindexer.config`, the redaction of secrets and the configuration reference in
``docs/configuration.md`` (a test checks the document against this table).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "ESINDEXER_"


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip().replace("_", ""))
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None


_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}


def _parse_size(value: Any) -> int:
    """Bytes, accepting ``8MiB``, ``5mb``, ``100000``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as 8MiB or 5000000, got {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None


def _parse_list(value: Any) -> tuple[str, ...]:
    """A comma-separated string (env, CLI) or a TOML array of strings."""
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        items = [v.strip() for v in str(value).split(",")]
    return tuple(v for v in items if v)


def _parse_routes(value: Any) -> tuple[tuple[str, str], ...]:
    """``pattern=route`` pairs: ``"myapp.content.*=content, *.User=users"`` or a TOML table."""
    if isinstance(value, Mapping):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        pairs = []
        for item in _parse_list(value):
            pattern, sep, route = item.partition("=")
            if not sep:
                raise ValueError(f"expected pattern=route, got {item!r}")
            pairs.append((pattern.strip(), route.strip()))
    return tuple(pairs)


def _parse_str(value: Any) -> str:
    return str(value).strip()


def _parse_partition(value: Any) -> str | None:
    """``i/N`` (0-based): this process handles the objects with ``zoid mod N == i``."""
    text = str(value).strip()
    match = re.fullmatch(r"(\d+)\s*/\s*(\d+)", text)
    if not match:
        raise ValueError(f"expected i/N such as 0/4 (0-based), got {value!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError(f"expected i/N with 0 <= i < N, got {value!r}")
    return f"{index}/{count}"


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text

    parse.choices = choices  # type: ignore[attr-defined]
    return parse


@dataclass(frozen=True)
class Setting:
    """One declared setting: its name, type, default and meaning."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    secret: bool = False
    required: bool = False
    group: str = "general"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    # Source
    Setting("pg_dsn", _parse_str, None, "PostgreSQL DSN of the RelStorage database (libpq URI or key=value).",
            secret=True, required=True, group="source"),
    Setting("client_id", _parse_str, "esindexer",
            "Name under which progress, deletion cursor and dead letters are kept; one running indexer per id.",
            group="source"),
    Setting("standby", _parse_bool, True,
            "When another esindexer holds this client id's lock: true = wait as a hot standby (/readyz "
            "503 'standby') and take over within seconds when it stops or loses PostgreSQL, or within "
            "ESINDEXER_LEASE_SECONDS + 5 s when it hangs; false = "
            "exit with code 4.", group="source"),
    Setting("lease_seconds", _parse_float, 20.0,
            "The active process renews a lease in PostgreSQL every quarter of this (at most every 2 s); a "
            "standby ends the "
            "PostgreSQL session of an active process whose lease is older than this while transactions "
            "wait to be indexed (stopped, frozen or stuck: it keeps its lock otherwise), and takes over. "
            "An active process whose pipeline does nothing for this long (no record read, request answered "
            "or batch settled) while transactions wait ends its own lock session the same way. Same value on every process of a client id.", group="source"),
    Setting("partition", _parse_partition, None,
            "i/N (0-based): index only the objects with zoid mod N = i, with progress, lock, deletion "
            "cursor and dead letters kept under <client_id>.partition-<i>-of-<N>; N such processes "
            "together keep the whole index (docs/operations.md).", group="source"),
    Setting("batch_limit", _parse_int, 10_000,
            "Soft number of rows per follow batch; batches end on transaction boundaries and progress is "
            "saved after each.", group="source"),
    Setting("fetch_size", _parse_int, 2_000, "Rows fetched per query while reading a batch.", group="source"),
    Setting("poll_timeout", _parse_float, 30.0,
            "Seconds between polls when no notification arrives (backstop for LISTEN/NOTIFY).",
            group="source"),
    Setting("poll_interval", _parse_float, 2.0,
            "Seconds between polls when the notify trigger is absent (a role without DDL rights, "
            "a replica): the latency of that mode.", group="source"),
    Setting("install_triggers", _parse_bool, True,
            "Install the notify and pack-deletion triggers at start (needs DDL rights; polling and the "
            "start-up sweep are used without them).", group="source"),
    Setting("sweep_on_start", _choice("auto", "always", "never"), "auto",
            "Remove documents whose objects are gone from the database (packed while no deletion trigger "
            "was installed): auto = when the trigger was missing at start.", group="source"),
    # Elasticsearch
    Setting("es_url", _parse_list, ("http://localhost:9200",),
            "Elasticsearch URL(s), comma-separated.", group="elasticsearch"),
    Setting("search_engine", _choice("elasticsearch", "opensearch", "auto"), "elasticsearch",
            "The search engine at ESINDEXER_ES_URL: elasticsearch (8.19, 9.x), opensearch (2.x, 3.x; "
            "docs/opensearch.md), or auto = ask the server once at start (GET /).", group="elasticsearch"),
    Setting("es_api_key", _parse_str, None, "Elasticsearch API key (base64 id:key).", secret=True,
            group="elasticsearch"),
    Setting("es_username", _parse_str, None, "Elasticsearch user for basic auth.", group="elasticsearch"),
    Setting("es_password", _parse_str, None, "Elasticsearch password for basic auth.", secret=True,
            group="elasticsearch"),
    Setting("es_ca_file", _parse_str, None, "CA certificate file (PEM) for HTTPS.", group="elasticsearch"),
    Setting("es_verify_certs", _parse_bool, True, "Verify the server's TLS certificate.",
            group="elasticsearch"),
    Setting("es_request_timeout", _parse_float, 60.0, "Seconds before one Elasticsearch request times out.",
            group="elasticsearch"),
    # Documents
    Setting("profile", _choice("plone"), None,
            "A ready-made configuration for an application: plone = one document per Plone content "
            "item with the fields Plone's catalog searches by (implies ESINDEXER_DOCUMENTS=objects, "
            "ESINDEXER_OBJECT_CLASSES = Plone's content classes, ESINDEXER_TRANSFORM="
            "esindexer.transforms.plone.object_transform and their mapping: docs/plone.md); "
            "settings given explicitly win over the profile's.", group="documents"),
    Setting("index_prefix", _parse_str, "zodb",
            "Alias users query; concrete indices are <prefix>-<route>.", group="documents"),
    Setting("alias", _parse_str, None,
            "Alias users and Kibana query; unset = the index prefix. Several generations of "
            "indices (prefixes) can serve one alias, one at a time.", group="documents"),
    Setting("attach_alias", _parse_bool, True,
            "Put this prefix's indices behind the alias. false while building a new generation "
            "for a re-index without downtime; `esindexer alias` then switches the alias over.",
            group="documents"),
    Setting("default_route", _parse_str, "objects", "Route (index suffix) of classes no route matches.",
            group="documents"),
    Setting("class_routes", _parse_routes, (),
            "Class to index routing: 'glob=route' pairs, first match wins (e.g. 'myapp.content.*=content').",
            group="documents"),
    Setting("class_include", _parse_list, ("*",), "Glob patterns of class names to index.",
            group="documents"),
    Setting("class_exclude", _parse_list, (),
            "Glob patterns of class names not to index (BTrees.* and ZODB.blob* are always skipped).",
            group="documents"),
    Setting("transform", _parse_str, None,
            "Dotted name of a transform: transform(obj) -> fields | None sees each object as Python "
            "data and adds search fields (docs/documents.md); the older transform(class_name, json_text) "
            "-> json_text | None | '' is still accepted (docs/json.md).",
            group="documents"),
    Setting("trusted_pickles", _parse_bool, False,
            "No effect, kept so that existing configurations load: the opcode pre-scan it "
            "used to skip also bounds nesting depth, which trusted writers can exceed too "
            "(docs/json.md). Code from pickles never runs either way.", group="documents"),
    Setting("state_mapping", _choice("typed", "flattened", "dynamic"), "typed",
            "How the object state is mapped: typed (dates, numbers and text typed per attribute, "
            "conflicts harmless, bounded: docs/documents.md), flattened (one keyword-only field) or "
            "dynamic (Elasticsearch's own; conflicting documents are dead-lettered).", group="documents"),
    Setting("documents", _choice("records", "objects"), "records",
            "What a document is: records (one per ZODB record, as stored) or objects (one per "
            "application object, its parts folded in, with its path; docs/documents.md#objects).",
            group="documents"),
    Setting("object_classes", _parse_list, ("*",),
            "With documents=objects: glob patterns of the classes whose objects get documents "
            "(every object in the tree by default); the others still place their children.",
            group="documents"),
    Setting("index_refresh_interval", _parse_str, None,
            "index.refresh_interval of created indices (e.g. 250ms for searches within a quarter "
            "second of a commit); unset = Elasticsearch's 1s. -1 turns refreshes off.",
            group="documents"),
    Setting("live_refresh_interval", _parse_float, 0.1,
            "While caught up, make written changes searchable within about this many seconds by "
            "refreshing the touched indices explicitly (at most once per interval, coalesced); "
            "while behind, no explicit refresh. 0 = only the index's own refresh_interval.",
            group="documents"),
    Setting("ingest_pipeline", _parse_str, None,
            "Ingest pipeline every document passes through (index.default_pipeline of esindexer's "
            "indices, existing ones included); it must exist: checked at start.", group="documents"),
    Setting("index_shards", _parse_int, 1, "Primary shards of each index created.", group="documents"),
    Setting("index_replicas", _parse_int, 1, "Replicas of each index created (0 on a single node).",
            group="documents"),
    # Flow control
    Setting("bulk_max_docs", _parse_int, 1_000, "Most documents in one bulk request.", group="flow"),
    Setting("bulk_max_bytes", _parse_size, 8 * 1024 * 1024, "Most bytes in one bulk request (e.g. 8MiB).",
            group="flow"),
    Setting("bulk_concurrency", _parse_int, 2, "Bulk requests in flight at once.", group="flow"),
    Setting("retry_max_seconds", _parse_float, 60.0, "Cap of the exponential retry back-off.", group="flow"),
    Setting("retry_attempts", _parse_int, 0, "Attempts before giving up on Elasticsearch; 0 = forever.",
            group="flow"),
    Setting("dead_letter_budget", _parse_int, 1_000,
            "Dead letters allowed within the window before the service stops unhealthy; 0 = unlimited.",
            group="flow"),
    Setting("dead_letter_window", _parse_float, 300.0, "Window of the dead-letter budget, in seconds.",
            group="flow"),
    Setting("shutdown_timeout", _parse_float, 30.0,
            "Seconds to wait for in-flight bulks on SIGTERM/SIGINT before abandoning them (progress stays at "
            "the last acknowledged batch); one second later anything else still waiting for a server (the "
            "start-up sweep, rewriting object documents after a crash) is abandoned too. A second signal "
            "abandons at once.", group="flow"),
    Setting("crash_guard_after", _parse_int, 2,
            "Process deaths without a clean exit (a native crash, an OOM kill) at the same saved progress "
            "after which the next start converts the records up to the newest tid in a child process, "
            "dead-lettering as crashed each record that kills it; 0 = never.", group="flow"),
    Setting("repair_after_restore", _choice("auto", "off"), "auto",
            "When the index holds documents newer than the database (it went back in time: restored from "
            "a backup): auto = once the service has re-read the restored records, compare every object with "
            "its document and rewrite what differs (as verify --repair) until none differs; off = only "
            "report it (log, status, /readyz, metric) and leave the repair to esindexer verify --repair.",
            group="flow"),
    # Observe
    Setting("metrics_host", _parse_str, "127.0.0.1", "Address of the /metrics, /healthz, /readyz server.",
            group="observe"),
    Setting("metrics_port", _parse_int, 9650, "Port of that server; 0 disables it.", group="observe"),
    Setting("stall_seconds", _parse_float, 300.0,
            "Not ready when lag > 0 and no progress for this long.", group="observe"),
    Setting("lag_poll_interval", _parse_float, 5.0, "Seconds between polls of the newest source tid.",
            group="observe"),
    Setting("unmapped_check_interval", _parse_float, 60.0,
            "Seconds between counts of documents holding fields the index did not map (field limit "
            "reached, or a value the mapping refused); sets esindexer_documents_with_unmapped_fields and "
            "logs a warning naming the fields when the count grows; at most every 600 s while a backlog is "
            "worked through (a search wakes a search-idle index into refreshing: docs/performance.md); "
            "0 turns it off.", group="observe"),
    Setting("progress_interval", _parse_float, 10.0,
            "Seconds between progress lines (rows done and left, rate, ETA) while a backlog is worked "
            "through and stderr is not a terminal (a terminal gets a live bar); 0 turns progress off.",
            group="observe"),
    Setting("log_format", _choice("text", "json"), "text", "Log format.", group="observe"),
    Setting("log_level", _choice("debug", "info", "warning", "error"), "info", "Log level.",
            group="observe"),
)


SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


def describe_settings() -> list[dict[str, Any]]:
    """Rows of the configuration reference: name, env, flag, default, help, group."""
    rows = []
    for spec in SETTINGS:
        default = spec.default
        if isinstance(default, tuple):
            default = ",".join("=".join(x) if isinstance(x, tuple) else x for x in default)
        rows.append(dict(name=spec.name, env=spec.env, flag=spec.flag, default=default, help=spec.help,
                         group=spec.group, secret=spec.secret, required=spec.required,
                         choices=getattr(spec.parse, "choices", None), boolean=spec.parse is _parse_bool))
    return rows


_GROUP_TITLES = {
    "source": "Source (PostgreSQL / RelStorage)",
    "elasticsearch": "Elasticsearch connection",
    "documents": "Documents, routing and mapping",
    "flow": "Flow control, retries and the error budget",
    "observe": "Metrics, health and logs",
}


def render_reference() -> str:
    """The settings tables of docs/configuration.md (``esindexer config --reference``)."""
    lines: list[str] = []
    for group, title in _GROUP_TITLES.items():
        lines += [f"### {title}", "", "| environment variable | flag | default | meaning |", "|---|---|---|---|"]
        for row in describe_settings():
            if row["group"] != group:
                continue
            default = "*required*" if row["required"] else (
                "*none*" if row["default"] in (None, "") else f"`{row['default']}`")
            meaning = row["help"].replace("|", "\\|")
            if row["choices"]:
                meaning += " One of: " + ", ".join(f"`{c}`" for c in row["choices"]) + "."
            if row["secret"]:
                meaning += " Secret: redacted in output and logs."
            flag = f"`{row['flag']}` / `--no-{row['flag'][2:]}`" if row["boolean"] else f"`{row['flag']}`"
            lines.append(f"| `{row['env']}` | {flag} | {default} | {meaning} |")
        lines.append("")
    return "\n".join(lines)

