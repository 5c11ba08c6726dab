"""Settings: precedence, validation messages, redaction, and the docs table staying true."""

from __future__ import annotations

import dataclasses
import os

import pytest

from esindexer.config import Settings, load_settings
from esindexer.config_table import SETTINGS
from esindexer.convert.configure import class_filter
from esindexer.errors import ConfigError
from esindexer.redact import redact

DSN = "postgresql://zodb:s3cret@db.example/zodb"


def test_declarations_match_the_settings_dataclass():
    assert [f.name for f in dataclasses.fields(Settings)] == [s.name for s in SETTINGS]
    assert all(s.env == "ESINDEXER_" + s.name.upper() for s in SETTINGS)


def test_defaults_need_only_a_dsn():
    settings = load_settings(env={"ESINDEXER_PG_DSN": DSN})
    assert settings.pg_dsn == DSN
    assert settings.es_url == ("http://localhost:9200",)
    assert settings.es_verify_certs is True
    assert settings.metrics_host == "127.0.0.1"


def test_precedence_file_then_env_then_cli(tmp_path):
    toml = tmp_path / "esindexer.toml"
    toml.write_text(f'pg_dsn = "{DSN}"\nbulk_max_docs = 10\nclient_id = "from-file"\n'
                    'class_routes = {"myapp.content.*" = "content"}\n')
    settings = load_settings(env={"ESINDEXER_BULK_MAX_DOCS": "20"}, cli={"client_id": "from-cli"},
                             config_file=str(toml))
    assert settings.bulk_max_docs == 20
    assert settings.client_id == "from-cli"
    assert settings.class_routes == (("myapp.content.*", "content"),)
    assert settings.route_names() == ("objects", "content")


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_settings(env={
            "ESINDEXER_BULK_MAX_DOCS": "lots",
            "ESINDEXER_ES_URL": "ftp://elastic",
            "ESINDEXER_LOG_FORMAT": "xml",
            "ESINDEXER_INDEX_PREFIX": "Bad Name",
            "ESINDEXER_BULK_MAX_BYTES": "500MiB",
            "ESINDEXER_ES_USERNAME": "elastic",
            "ESINDEXER_PG_DNS": DSN,
            "ESINDEXER_ES_CA_FILE": "/nonexistent/ca.pem",
        })
    text = str(info.value)
    for expected in (
        "ESINDEXER_PG_DNS: unknown setting (did you mean ESINDEXER_PG_DSN?)",
        "ESINDEXER_PG_DSN: required",
        "ESINDEXER_BULK_MAX_DOCS: expected an integer, got 'lots'",
        "ESINDEXER_ES_URL: 'ftp://elastic' is not an http(s) URL",
        "ESINDEXER_LOG_FORMAT: expected one of text, json, got 'xml'",
        "ESINDEXER_INDEX_PREFIX: 'Bad Name' is not a valid Elasticsearch index name part",
        "ESINDEXER_BULK_MAX_BYTES: Elasticsearch rejects requests over 100MB",
        "ESINDEXER_ES_USERNAME and ESINDEXER_ES_PASSWORD go together",
        "ESINDEXER_ES_CA_FILE: no such file",
    ):
        assert expected in text, (expected, text)


def test_bad_dsn_and_transform_are_caught_at_start():
    with pytest.raises(ConfigError) as info:
        load_settings(env={"ESINDEXER_PG_DSN": "host=db port=5432 sslmode", "ESINDEXER_TRANSFORM": "no.such.module.fn"})
    text = str(info.value)
    assert "ESINDEXER_PG_DSN: not a valid PostgreSQL DSN" in text
    assert "ESINDEXER_TRANSFORM: cannot load 'no.such.module.fn'" in text


def test_broken_toml_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("pg_dsn = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(env={}, config_file=str(bad))
    with pytest.raises(ConfigError, match="No such file"):
        load_settings(env={}, config_file=str(tmp_path / "missing.toml"))


def test_redaction():
    assert redact(DSN) == "postgresql://zodb:***@db.example/zodb"
    assert redact("host=db password=s3cret user=zodb") == "host=db password=*** user=zodb"
    settings = load_settings(env={"ESINDEXER_PG_DSN": DSN, "ESINDEXER_ES_API_KEY": "abc=="})
    shown = settings.redacted()
    assert "s3cret" not in repr(shown) and "abc==" not in repr(shown)
    assert shown["es_api_key"] == "***"


def test_class_filter_always_skips_btrees_and_blobs():
    skip = class_filter(load_settings(env={"ESINDEXER_PG_DSN": DSN, "ESINDEXER_CLASS_INCLUDE": "myapp.*,BTrees.*",
                                           "ESINDEXER_CLASS_EXCLUDE": "myapp.secret.*"}))
    assert skip("BTrees.OOBTree.OOBTree")
    assert skip("ZODB.blob.Blob")
    assert skip("myapp.secret.Key")
    assert skip("other.Thing")
    assert not skip("myapp.content.Document")


def _cli(*args: str, env: dict[str, str]):
    from tests.support import run_esindexer

    return run_esindexer(*args, env=env)


def test_cli_config_prints_redacted_settings():
    done = _cli("config", "--bulk-max-docs", "77", env={"ESINDEXER_PG_DSN": DSN, "ESINDEXER_ES_PASSWORD": "pw",
                                                         "ESINDEXER_ES_USERNAME": "elastic"})
    assert done.returncode == 0, done.stderr
    assert "ESINDEXER_BULK_MAX_DOCS=77" in done.stdout
    assert "ESINDEXER_PG_DSN=postgresql://zodb:***@db.example/zodb" in done.stdout
    assert "s3cret" not in done.stdout and "=pw" not in done.stdout


def test_cli_bad_configuration_exits_2_with_clear_message():
    done = _cli("run", env={"ESINDEXER_BULK_CONCURRENCY": "0"})
    assert done.returncode == 2
    assert "ESINDEXER_PG_DSN: required" in done.stderr
    assert "ESINDEXER_BULK_CONCURRENCY: must be at least 1, got 0" in done.stderr


def test_cli_help_teaches():
    done = _cli("--help", env={})
    assert done.returncode == 0
    for word in ("run", "status", "install-trigger", "verify", "dead-letters", "alias", "config",
                 "ESINDEXER_PG_DSN", "exit codes"):
        assert word in done.stdout
    run = _cli("run", "--help", env={})
    assert run.returncode == 0, run.stderr
    run_help = run.stdout
    assert "--until-caught-up" in run_help and "ESINDEXER_BULK_MAX_BYTES" in run_help


def test_configuration_reference_lists_every_setting():
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "configuration.md")
    text = open(path).read()
    from esindexer.config_table import describe_settings

    for row in describe_settings():
        assert f"`{row['env']}`" in text, f"{row['env']} missing from docs/configuration.md"
        assert f"`{row['flag']}`" in text, f"{row['flag']} missing from docs/configuration.md"


def test_configuration_reference_is_generated_from_the_declarations():
    from esindexer.config_table import render_reference

    path = os.path.join(os.path.dirname(__file__), "..", "docs", "configuration.md")
    text = open(path).read()
    begin, end = "<!-- BEGIN GENERATED REFERENCE -->\n", "<!-- END GENERATED REFERENCE -->"
    section = text[text.index(begin) + len(begin):text.index(end)]
    assert section.strip() == render_reference().strip(), \
        "docs/configuration.md is stale: regenerate the section with `esindexer config --reference`"


def test_elasticsearch_client_auth_and_tls(tmp_path):
    import base64

    from esindexer.es.client import make_es_client

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    with_key = make_es_client(load_settings(env={"ESINDEXER_PG_DSN": DSN, "ESINDEXER_ES_URL": "https://es:9200",
                                                 "ESINDEXER_ES_API_KEY": "a2V5"}))
    assert with_key._headers["authorization"] == "ApiKey a2V5"
    basic = make_es_client(load_settings(env={"ESINDEXER_PG_DSN": DSN, "ESINDEXER_ES_URL": "http://es:9200",
                                              "ESINDEXER_ES_USERNAME": "elastic", "ESINDEXER_ES_PASSWORD": "pw"}))
    assert basic._headers["authorization"] == "Basic " + base64.b64encode(b"elastic:pw").decode()
    settings = load_settings(env={"ESINDEXER_PG_DSN": DSN, "ESINDEXER_ES_URL": "https://es:9200",
                                  "ESINDEXER_ES_CA_FILE": str(ca)})
    node = make_es_client(settings).transport.node_pool.all()[0].config
    assert node.verify_certs is True and node.ca_certs == str(ca)
    assert settings.es_verify_certs is True  # verification is on unless switched off


def test_unreachable_postgresql_is_a_clear_error():
    done = _cli("status", env={"ESINDEXER_PG_DSN": "postgresql://nobody:x@127.0.0.1:9/none"})
    assert done.returncode == 5
    assert "esindexer: cannot reach PostgreSQL" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_database_without_relstorage_tables_is_a_clear_error(db_dsn, es_url):
    env = {"ESINDEXER_PG_DSN": db_dsn, "ESINDEXER_ES_URL": es_url, "ESINDEXER_INDEX_PREFIX": "no-relstorage"}
    for command in ("status", "verify", "install-trigger"):
        done = _cli(command, env=env)
        assert done.returncode == 2, (command, done.stderr)
        assert "no RelStorage table object_state" in done.stderr and "ESINDEXER_PG_DSN" in done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize("given, named", [({"cli": {"index_prefix": "NcShop"}}, "--index-prefix: 'NcShop'"),
                                          ({"env": {"ESINDEXER_INDEX_PREFIX": "NcShop"}},
                                           "ESINDEXER_INDEX_PREFIX: 'NcShop'")], ids=["flag", "environment"])
def test_a_bad_value_is_named_as_it_was_given(given, named):
    """Issue 26.7: ``--index-prefix NcShop`` was reported as ``ESINDEXER_INDEX_PREFIX: ...``."""
    env = {"ESINDEXER_PG_DSN": DSN, **given.get("env", {})}
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env, cli=given.get("cli", {}))
    assert any(problem.startswith(named) for problem in caught.value.problems), caught.value.problems


def test_the_plone_profile_implies_its_settings_and_explicit_ones_win():
    from esindexer.config import PROFILES

    base = {"ESINDEXER_PG_DSN": "postgresql://u@h/db"}
    plain = load_settings(env=base)
    assert plain.profile is None and plain.transform is None
    plone = load_settings(env={**base, "ESINDEXER_PROFILE": "plone"})
    assert plone.profile == "plone"
    assert plone.transform == "esindexer.transforms.plone.object_transform"
    for name, value in PROFILES["plone"].items():
        if hasattr(plone, name):  # documents, object_classes: with the object model
            assert getattr(plone, name) == value, name
    mine = load_settings(env={**base, "ESINDEXER_PROFILE": "plone", "ESINDEXER_TRANSFORM": "esindexer.transforms.plone.transform"},
                         cli={"profile": None})
    assert mine.transform == "esindexer.transforms.plone.transform"
    with pytest.raises(ConfigError, match="ESINDEXER_PROFILE: expected one of plone"):
        load_settings(env={**base, "ESINDEXER_PROFILE": "wordpress"})
