"""Settings: parsed and validated once, then passed down as one typed object.

Every setting is declared once, in :data:`SETTINGS`. That one declaration drives
the environment variable (``ESINDEXER_<NAME>``), the TOML key (``name``), the CLI
flag (``--name-with-dashes``), the default, the validation, the redaction of
secrets and the configuration reference in ``docs/configuration.md`` (a test
checks the document against this table, so the two cannot drift).

Precedence, lowest first: defaults, the TOML file (``--config`` or
``ESINDEXER_CONFIG_FILE``), environment variables, CLI flags. All problems are
collected and reported together, so a wrong deployment is fixed in one round.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import re
import tomllib
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "ESINDEXER_"
REDACTED = "***"


class ConfigError(ValueError):
    """One or more settings are wrong; ``problems`` lists each one in plain words."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


# --- value parsers: str (env, CLI) or TOML value -> typed value, ValueError on junk -----------


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
            "Dotted name of a function transform(class_name, json_text) -> json_text | None | '' .",
            group="documents"),
    Setting("trusted_pickles", _parse_bool, False,
            "No effect, kept so that existing configurations load: the opcode pre-scan it "
            "used to skip also bounds nesting depth, which trusted writers can exceed too "
            "(docs/json.md). Code from pickles never runs either way.", group="documents"),
    Setting("state_mapping", _choice("flattened", "dynamic"), "flattened",
            "How the object state is mapped: flattened (one field, never conflicts) or dynamic "
            "(typed fields; conflicting documents are dead-lettered).", group="documents"),
    Setting("index_refresh_interval", _parse_str, None,
            "index.refresh_interval of created indices (e.g. 250ms for searches within a quarter "
            "second of a commit); unset = Elasticsearch's 1s. -1 turns refreshes off.",
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
            "Seconds to wait for in-flight bulks on SIGTERM before abandoning them.", group="flow"),
    # Observe
    Setting("metrics_host", _parse_str, "127.0.0.1", "Address of the /metrics, /healthz, /readyz server.",
            group="observe"),
    Setting("metrics_port", _parse_int, 9650, "Port of that server; 0 disables it.", group="observe"),
    Setting("stall_seconds", _parse_float, 300.0,
            "Not ready when lag > 0 and no progress for this long.", group="observe"),
    Setting("lag_poll_interval", _parse_float, 5.0, "Seconds between polls of the newest source tid.",
            group="observe"),
    Setting("log_format", _choice("text", "json"), "text", "Log format.", group="observe"),
    Setting("log_level", _choice("debug", "info", "warning", "error"), "info", "Log level.",
            group="observe"),
)

SETTINGS_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one esindexer process."""

    pg_dsn: str
    client_id: str = "esindexer"
    batch_limit: int = 10_000
    fetch_size: int = 2_000
    poll_timeout: float = 30.0
    poll_interval: float = 2.0
    install_triggers: bool = True
    sweep_on_start: str = "auto"
    es_url: tuple[str, ...] = ("http://localhost:9200",)
    es_api_key: str | None = None
    es_username: str | None = None
    es_password: str | None = None
    es_ca_file: str | None = None
    es_verify_certs: bool = True
    es_request_timeout: float = 60.0
    index_prefix: str = "zodb"
    alias: str | None = None
    attach_alias: bool = True
    default_route: str = "objects"
    class_routes: tuple[tuple[str, str], ...] = ()
    class_include: tuple[str, ...] = ("*",)
    class_exclude: tuple[str, ...] = ()
    transform: str | None = None
    trusted_pickles: bool = False
    state_mapping: str = "flattened"
    index_refresh_interval: str | None = None
    ingest_pipeline: str | None = None
    index_shards: int = 1
    index_replicas: int = 1
    bulk_max_docs: int = 1_000
    bulk_max_bytes: int = 8 * 1024 * 1024
    bulk_concurrency: int = 2
    retry_max_seconds: float = 60.0
    retry_attempts: int = 0
    dead_letter_budget: int = 1_000
    dead_letter_window: float = 300.0
    shutdown_timeout: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9650
    stall_seconds: float = 300.0
    lag_poll_interval: float = 5.0
    log_format: str = "text"
    log_level: str = "info"

    def route_names(self) -> tuple[str, ...]:
        """Every route an object may be indexed under (deletes go to all of them)."""
        names = [self.default_route] + [route for _, route in self.class_routes]
        return tuple(dict.fromkeys(names))

    @property
    def alias_name(self) -> str:
        """The alias users query: ``alias`` if set, else the index prefix."""
        return self.alias or self.index_prefix

    def index_for_route(self, route: str) -> str:
        return f"{self.index_prefix}-{route}"

    def redacted(self) -> dict[str, Any]:
        """The effective settings with secrets replaced, for printing and logging."""
        out: dict[str, Any] = {}
        for spec in SETTINGS:
            value = getattr(self, spec.name)
            if spec.name == "pg_dsn":
                value = redact_dsn(value)
            elif spec.secret and value:
                value = REDACTED
            out[spec.name] = value
        return out


def redact_dsn(dsn: str) -> str:
    """Hide the password in a URI or key=value DSN."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        if parts.password:
            netloc = parts.netloc.replace(":" + parts.password + "@", ":" + REDACTED + "@", 1)
            return urlunsplit(parts._replace(netloc=netloc))
        return dsn
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1" + REDACTED, dsn)


_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_+-]*$")


def _validate(values: dict[str, Any], problems: list[str]) -> None:
    """Cross-field and range checks; append a sentence per problem."""

    def positive(name: str, minimum: float = 1) -> None:
        if values[name] < minimum:
            problems.append(f"{SETTINGS_BY_NAME[name].env}: must be at least {minimum}, got {values[name]}")

    for name in ("batch_limit", "fetch_size", "bulk_max_docs", "bulk_concurrency", "index_shards"):
        positive(name)
    for name in ("poll_timeout", "poll_interval", "retry_max_seconds", "dead_letter_window", "stall_seconds",
                 "lag_poll_interval", "es_request_timeout"):
        positive(name, 0.1)
    for name in ("index_replicas", "retry_attempts", "dead_letter_budget", "shutdown_timeout"):
        positive(name, 0)
    if values["bulk_max_bytes"] < 1024:
        problems.append(f"ESINDEXER_BULK_MAX_BYTES: must be at least 1KiB, got {values['bulk_max_bytes']}")
    elif values["bulk_max_bytes"] > 100 * 1024 * 1024:
        problems.append("ESINDEXER_BULK_MAX_BYTES: Elasticsearch rejects requests over 100MB "
                        "(http.max_content_length); use 5-15MiB")
    if not 0 <= values["metrics_port"] <= 65535:
        problems.append(f"ESINDEXER_METRICS_PORT: must be 0-65535, got {values['metrics_port']}")
    interval = values["index_refresh_interval"]
    if interval and not re.fullmatch(r"-1|\d+(ms|s|m)", interval):
        problems.append(f"ESINDEXER_INDEX_REFRESH_INTERVAL: expected a time such as 250ms or 1s (or -1), "
                        f"got {interval!r}")
    for name in ("index_prefix", "default_route") + (("alias",) if values["alias"] else ()):
        if not _INDEX_NAME.match(values[name] or ""):
            problems.append(f"{SETTINGS_BY_NAME[name].env}: {values[name]!r} is not a valid Elasticsearch "
                            "index name part (lower-case letters, digits, '-', '_', '+')")
    for pattern, route in values["class_routes"]:
        if not _INDEX_NAME.match(route):
            problems.append(f"ESINDEXER_CLASS_ROUTES: route {route!r} (for {pattern!r}) is not a valid "
                            "index name part")
        if not pattern:
            problems.append("ESINDEXER_CLASS_ROUTES: empty class pattern")
    if not values["client_id"]:
        problems.append("ESINDEXER_CLIENT_ID: must not be empty")
    for url in values["es_url"]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"ESINDEXER_ES_URL: {url!r} is not an http(s) URL")
    if not values["es_url"]:
        problems.append("ESINDEXER_ES_URL: at least one URL is needed")
    if values["es_api_key"] and (values["es_username"] or values["es_password"]):
        problems.append("ESINDEXER_ES_API_KEY and ESINDEXER_ES_USERNAME/PASSWORD: choose one way to "
                        "authenticate")
    if bool(values["es_username"]) != bool(values["es_password"]):
        problems.append("ESINDEXER_ES_USERNAME and ESINDEXER_ES_PASSWORD go together")
    if values["es_ca_file"] and not os.path.isfile(values["es_ca_file"]):
        problems.append(f"ESINDEXER_ES_CA_FILE: no such file {values['es_ca_file']!r}")
    dsn = values["pg_dsn"]
    if dsn:
        try:
            from psycopg2.extensions import parse_dsn

            parse_dsn(dsn)
        except Exception as exc:  # psycopg2.ProgrammingError on junk
            problems.append(f"ESINDEXER_PG_DSN: not a valid PostgreSQL DSN ({str(exc).strip()})")
    if values["transform"]:
        try:
            load_dotted(values["transform"])
        except Exception as exc:
            problems.append(f"ESINDEXER_TRANSFORM: cannot load {values['transform']!r}: {exc}")


def load_dotted(name: str) -> Callable[..., Any]:
    """Import ``package.module.attr`` (or ``package.module:attr``) and check it is callable."""
    module_name, sep, attr = name.replace(":", ".").rpartition(".")
    if not sep or not module_name:
        raise ValueError("expected a dotted name such as mypackage.transforms.to_search")
    obj = getattr(importlib.import_module(module_name), attr)
    if not callable(obj):
        raise ValueError(f"{name} is not callable")
    return obj


def class_filter(settings: Settings) -> Callable[[str], bool]:
    """A predicate telling whether a class is NOT to be indexed (the Jsonifier's skip_class)."""
    include = tuple(settings.class_include)
    exclude = ("BTrees.*", "ZODB.blob*") + tuple(settings.class_exclude)

    def skip(class_name: str) -> bool:
        if any(fnmatch.fnmatchcase(class_name, p) for p in exclude):
            return True
        return not any(fnmatch.fnmatchcase(class_name, p) for p in include)

    return skip


def load_settings(
    env: Mapping[str, str] | None = None,
    cli: Mapping[str, Any] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge defaults, TOML file, environment and CLI values; validate; return Settings.

    ``cli`` maps setting names to values given on the command line (``None`` = not given).
    Raises :class:`ConfigError` listing every problem found.
    """
    env = os.environ if env is None else env
    cli = cli or {}
    problems: list[str] = []
    raw: dict[str, tuple[Any, str]] = {}

    config_file = config_file or env.get(ENV_PREFIX + "CONFIG_FILE")
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError([f"config file {config_file}: {exc.strerror}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"config file {config_file}: not valid TOML ({exc})"]) from None
        table = data.get("esindexer", data)
        for key, value in table.items():
            if key not in SETTINGS_BY_NAME:
                problems.append(f"config file {config_file}: unknown setting {key!r}"
                                + _suggest(key, SETTINGS_BY_NAME))
                continue
            raw[key] = (value, f"{config_file}: {key}")

    known_env = {s.env for s in SETTINGS} | {ENV_PREFIX + "CONFIG_FILE"}
    for key in env:
        if key.startswith(ENV_PREFIX) and key not in known_env and not key.startswith(ENV_PREFIX + "TEST_") \
                and key != ENV_PREFIX + "REQUIRE_SERVICES":
            problems.append(f"{key}: unknown setting" + _suggest(key, known_env))
    for spec in SETTINGS:
        if spec.env in env and env[spec.env] != "":
            raw[spec.name] = (env[spec.env], spec.env)
    for name, value in cli.items():
        if value is not None:
            raw[name] = (value, SETTINGS_BY_NAME[name].flag)

    values: dict[str, Any] = {}
    for spec in SETTINGS:
        if spec.name in raw:
            value, source = raw[spec.name]
            try:
                values[spec.name] = spec.parse(value)
            except ValueError as exc:
                problems.append(f"{source}: {exc}")
                values[spec.name] = spec.default
        else:
            values[spec.name] = spec.default
        if spec.required and not values[spec.name]:
            problems.append(f"{spec.env}: required ({spec.help})")
    _validate(values, problems)
    if problems:
        raise ConfigError(problems)
    return Settings(**values)


def _suggest(key: str, known: Any) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def describe_settings() -> list[dict[str, Any]]:
    """Rows of the configuration reference: name, env, flag, default, help, group."""
    rows = []
    for spec in SETTINGS:
        default = spec.default
        if isinstance(default, tuple):
            default = ",".join("=".join(x) if isinstance(x, tuple) else x for x in default)
        rows.append(dict(name=spec.name, env=spec.env, flag=spec.flag, default=default, help=spec.help,
                         group=spec.group, secret=spec.secret, required=spec.required,
                         choices=getattr(spec.parse, "choices", None)))
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
            lines.append(f"| `{row['env']}` | `{row['flag']}` | {default} | {meaning} |")
        lines.append("")
    return "\n".join(lines)
