"""Settings: parsed and validated once, then passed down as one typed object.

Every setting is declared once, in :data:`esindexer.config_table.SETTINGS` (name,
parser, default, meaning); this module turns flags, environment and a TOML file into
one validated :class:`Settings`.

Precedence, lowest first: defaults, the TOML file (``--config`` or
``ESINDEXER_CONFIG_FILE``), environment variables, CLI flags. All problems are
collected and reported together, so a wrong deployment is fixed in one round.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from esindexer.config_table import ENV_PREFIX, SETTINGS, SETTINGS_BY_NAME
from esindexer.errors import ConfigError
from esindexer.redact import REDACTED, redact

# --- value parsers: str (env, CLI) or TOML value -> typed value, ValueError on junk -----------


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one esindexer process.

    Built by :func:`load_settings` only: every field's default, parser and meaning is
    declared once, in :data:`SETTINGS` (tests check the two list the same names).
    """

    pg_dsn: str
    client_id: str
    standby: bool
    lease_seconds: float
    partition: str | None
    batch_limit: int
    fetch_size: int
    poll_timeout: float
    poll_interval: float
    install_triggers: bool
    sweep_on_start: str
    es_url: tuple[str, ...]
    search_engine: str
    es_api_key: str | None
    es_username: str | None
    es_password: str | None
    es_ca_file: str | None
    es_verify_certs: bool
    es_request_timeout: float
    profile: str | None
    index_prefix: str
    alias: str | None
    attach_alias: bool
    default_route: str
    class_routes: tuple[tuple[str, str], ...]
    class_include: tuple[str, ...]
    class_exclude: tuple[str, ...]
    transform: str | None
    trusted_pickles: bool
    state_mapping: str
    documents: str
    object_classes: tuple[str, ...]
    index_refresh_interval: str | None
    live_refresh_interval: float
    ingest_pipeline: str | None
    index_shards: int
    index_replicas: int
    bulk_max_docs: int
    bulk_max_bytes: int
    bulk_concurrency: int
    retry_max_seconds: float
    retry_attempts: int
    dead_letter_budget: int
    dead_letter_window: float
    shutdown_timeout: float
    crash_guard_after: int
    repair_after_restore: str
    metrics_host: str
    metrics_port: int
    stall_seconds: float
    lag_poll_interval: float
    unmapped_check_interval: float
    progress_interval: float
    log_format: str
    log_level: str

    @property
    def partition_spec(self) -> tuple[int, int] | None:
        """``(i, N)`` of ``partition``, or None when this process handles every object."""
        if not self.partition:
            return None
        index, count = self.partition.split("/")
        return int(index), int(count)

    @property
    def worker_id(self) -> str:
        """The id progress, the lock, the deletion cursor, dead letters and the crash guard are
        kept under: ``client_id``, or per partition its own derived id (each partition
        advances on its own; see :func:`partition_worker_id`)."""
        spec = self.partition_spec
        return self.client_id if spec is None else partition_worker_id(self.client_id, *spec)

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

    @property
    def routed_indices(self) -> tuple[str, ...]:
        """Every index of this prefix an object may be written to, one per route."""
        return tuple(self.index_for_route(route) for route in self.route_names())

    def redacted(self) -> dict[str, Any]:
        """The effective settings with secrets replaced, for printing and logging."""
        out: dict[str, Any] = {}
        for spec in SETTINGS:
            value = getattr(self, spec.name)
            if spec.secret and value and spec.name != "pg_dsn":
                value = REDACTED  # a key or password as a whole
            elif isinstance(value, str):
                value = redact(value)  # a DSN or URL keeps all but its password
            elif isinstance(value, tuple):
                value = tuple(redact(v) if isinstance(v, str) else v for v in value)
            out[spec.name] = value
        return out


def partition_worker_id(client_id: str, index: int, count: int) -> str:
    """The derived client id of partition ``index`` of ``count``."""
    return f"{client_id}{PARTITION_INFIX}{index}-of-{count}"


#: What separates a client id from its partition in derived ids (``esindexer.partition-0-of-4``).
PARTITION_INFIX = ".partition-"

_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_+-]*$")


def _validate(values: dict[str, Any], problems: list[str], sources: dict[str, str] | None = None) -> None:
    """Cross-field and range checks; append a sentence per problem, named as the value was
    given (``--index-prefix``, ``ESINDEXER_INDEX_PREFIX`` or ``file.toml: index_prefix``)."""
    given = sources or {}

    def where(name: str) -> str:
        return given.get(name, SETTINGS_BY_NAME[name].env)

    def positive(name: str, minimum: float = 1) -> None:
        if values[name] < minimum:
            problems.append(f"{where(name)}: must be at least {minimum}, got {values[name]}")

    for name in ("batch_limit", "fetch_size", "bulk_max_docs", "bulk_concurrency", "index_shards"):
        positive(name)
    positive("lease_seconds", 2)
    for name in ("poll_timeout", "poll_interval", "retry_max_seconds", "dead_letter_window", "stall_seconds",
                 "lag_poll_interval", "es_request_timeout"):
        positive(name, 0.1)
    for name in ("index_replicas", "retry_attempts", "dead_letter_budget", "shutdown_timeout",
                 "crash_guard_after", "live_refresh_interval", "progress_interval", "unmapped_check_interval"):
        positive(name, 0)
    if values["bulk_max_bytes"] < 1024:
        problems.append(f"{where('bulk_max_bytes')}: must be at least 1KiB, got {values['bulk_max_bytes']}")
    elif values["bulk_max_bytes"] > 100 * 1024 * 1024:
        problems.append(f"{where('bulk_max_bytes')}: Elasticsearch rejects requests over 100MB "
                        "(http.max_content_length); use 5-15MiB")
    if not 0 <= values["metrics_port"] <= 65535:
        problems.append(f"{where('metrics_port')}: must be 0-65535, got {values['metrics_port']}")
    interval = values["index_refresh_interval"]
    if interval and not re.fullmatch(r"-1|\d+(ms|s|m)", interval):
        problems.append(f"{where('index_refresh_interval')}: expected a time such as 250ms or 1s (or -1), "
                        f"got {interval!r}")
    for name in ("index_prefix", "default_route") + (("alias",) if values["alias"] else ()):
        if not _INDEX_NAME.match(values[name] or ""):
            problems.append(f"{where(name)}: {values[name]!r} is not a valid Elasticsearch "
                            "index name part (lower-case letters, digits, '-', '_', '+')")
    for pattern, route in values["class_routes"]:
        if not _INDEX_NAME.match(route):
            problems.append(f"{where('class_routes')}: route {route!r} (for {pattern!r}) is not a valid "
                            "index name part")
        if not pattern:
            problems.append(f"{where('class_routes')}: empty class pattern")
    if values["documents"] == "objects" and values["partition"]:
        problems.append(f"{where('partition')}: partitions cannot be used with documents=objects "
                        "(an object's parts and place span every partition); run one process")
    if values["documents"] == "objects" and values["state_mapping"] != "typed":
        problems.append(f"{where('documents')}: documents=objects needs state_mapping=typed")
    if not values["client_id"]:
        problems.append(f"{where('client_id')}: must not be empty")
    for url in values["es_url"]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"{where('es_url')}: {url!r} is not an http(s) URL")
    if not values["es_url"]:
        problems.append(f"{where('es_url')}: at least one URL is needed")
    if values["es_api_key"] and (values["es_username"] or values["es_password"]):
        problems.append(f"{where('es_api_key')} and {where('es_username')}/{where('es_password')}: choose one way to "
                        "authenticate")
    if bool(values["es_username"]) != bool(values["es_password"]):
        problems.append(f"{where('es_username')} and {where('es_password')} go together")
    if values["es_ca_file"] and not os.path.isfile(values["es_ca_file"]):
        problems.append(f"{where('es_ca_file')}: no such file {values['es_ca_file']!r}")
    dsn = values["pg_dsn"]
    if dsn:
        try:
            from psycopg2.extensions import parse_dsn

            parse_dsn(dsn)
        except Exception as exc:  # psycopg2.ProgrammingError on junk
            problems.append(f"{where('pg_dsn')}: not a valid PostgreSQL DSN ({str(exc).strip()})")
    if values["transform"]:
        try:
            transform_style(load_dotted(values["transform"]))
        except Exception as exc:
            problems.append(f"{where('transform')}: cannot load {values['transform']!r}: {exc}")


def transform_style(fn: Callable[..., Any]) -> str:
    """``"object"`` for a transform taking one argument (the object as Python data, called by
    the document builder), ``"text"`` for the older ``(class_name, json_text)`` form (called
    by the converter); anything else is refused, since calling it would fail on every record."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        raise ValueError("cannot read its signature; a transform takes (obj) or (class_name, json_text)") from None
    positional = [p for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if len(positional) == 1:
        return "object"
    if len(positional) == 2:
        return "text"
    raise ValueError(f"takes {len(positional)} required arguments; a transform takes (obj) or "
                     "(class_name, json_text)")


def load_dotted(name: str) -> Callable[..., Any]:
    """Import ``package.module.attr`` (or ``package.module:attr``) and check it is callable."""
    module_name, sep, attr = name.replace(":", ".").rpartition(".")
    if not sep or not module_name:
        raise ValueError("expected a dotted name such as mypackage.transforms.to_search")
    obj: object = getattr(importlib.import_module(module_name), attr)
    if not callable(obj):
        raise ValueError(f"{name} is not callable")
    return obj


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
        if key.startswith(ENV_PREFIX) and key not in known_env:
            problems.append(f"{key}: unknown setting" + _suggest(key, known_env))
    for spec in SETTINGS:
        if spec.env in env and env[spec.env] != "":
            raw[spec.name] = (env[spec.env], spec.env)
    for name, value in cli.items():
        if value is not None:
            raw[name] = (value, SETTINGS_BY_NAME[name].flag)

    _apply_profile(raw, problems)
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
    _validate(values, problems, {name: source for name, (_, source) in raw.items()})
    if problems:
        raise ConfigError(problems)
    return Settings(**values)


#: What each ``ESINDEXER_PROFILE`` implies: setting name -> value, for the settings not
#: given explicitly (defaults are not "given": the profile replaces them). Settings a
#: profile names that this version does not have are left out.
PROFILES: dict[str, dict[str, Any]] = {
    "plone": {
        "documents": "objects",
        # Dexterity content (plone.app.contenttypes' classes, and types of add-ons built on
        # plone.dexterity's Item/Container), the site root, and Archetypes-era content.
        "object_classes": ("plone.app.contenttypes.content.*", "plone.dexterity.content.*",
                           "Products.CMFPlone.Portal.PloneSite", "Products.ATContentTypes.content.*"),
        "transform": "esindexer.transforms.plone.object_transform",
    },
}


def _apply_profile(raw: dict[str, tuple[Any, str]], problems: list[str]) -> None:
    """Fill in what ``ESINDEXER_PROFILE`` implies, for each setting not given explicitly."""
    if "profile" not in raw:
        return
    value, source = raw["profile"]
    try:
        profile = SETTINGS_BY_NAME["profile"].parse(value)
    except ValueError:
        return  # reported when the profile setting itself is parsed
    for name, implied in PROFILES[profile].items():
        if name in SETTINGS_BY_NAME and name not in raw:
            raw[name] = (implied, f"{source} (profile {profile}: {name})")


def _suggest(key: str, known: Any) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


