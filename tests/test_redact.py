"""Redaction: every form a secret takes in a setting or connection string (no servers),
and what the commands print (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from esindexer.config import load_settings
from esindexer.redact import redact

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(("text", "expected"), [
    # URI user-info (PostgreSQL and Elasticsearch URLs)
    (f"postgresql://zodb:{SECRET}@db.example/zodb", "postgresql://zodb:***@db.example/zodb"),
    (f"http://elastic:{SECRET}@es:9200", "http://elastic:***@es:9200"),
    (f"https://u:{SECRET}@a:9200,https://v:{SECRET}@b:9200", "https://u:***@a:9200,https://v:***@b:9200"),
    ("postgresql://zodb:p%40ss%2Fw@db/zodb", "postgresql://zodb:***@db/zodb"),
    # URI query parameters, also a key=value DSN given through a URI
    (f"postgresql://zodb@db/zodb?password={SECRET}", "postgresql://zodb@db/zodb?password=***"),
    (f"postgresql:///zodb?host=db&password={SECRET}&sslmode=require",
     "postgresql:///zodb?host=db&password=***&sslmode=require"),
    (f"postgresql://db/zodb?sslpassword={SECRET}", "postgresql://db/zodb?sslpassword=***"),
    # key=value DSNs, quoted or not
    (f"host=db password={SECRET} user=zodb", "host=db password=*** user=zodb"),
    ("host=db password='with spaces and \\' quote' user=zodb", "host=db password=*** user=zodb"),
    (f"host=db PASSWORD = {SECRET}", "host=db PASSWORD = ***"),
    # API keys and Authorization header values
    (f"api_key={SECRET}", "api_key=***"),
    ("Authorization: ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==",
     "Authorization: ApiKey ***"),
    # nothing secret: unchanged
    ("postgresql://zodb@db/zodb", "postgresql://zodb@db/zodb"),
    ("http://127.0.0.1:9200", "http://127.0.0.1:9200"),
    ("host=db user=zodb dbname=zodb", "host=db user=zodb dbname=zodb"),
])
def test_every_form_of_secret_is_replaced(text, expected):
    assert redact(text) == expected


def test_the_printable_settings_hide_every_secret():
    settings = load_settings(env={
        "ESINDEXER_PG_DSN": f"postgresql://zodb@db/zodb?password={SECRET}",
        "ESINDEXER_ES_URL": f"http://elastic:{SECRET}@es:9200",
        "ESINDEXER_ES_API_KEY": SECRET,
    })
    shown = settings.redacted()
    assert SECRET not in repr(shown)
    assert shown["es_url"] == ("http://elastic:***@es:9200",)
    assert shown["pg_dsn"] == "postgresql://zodb@db/zodb?password=***"


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESINDEXER_")}
    env.update({f"ESINDEXER_{k}": v for k, v in settings.items()})
    return env


def test_config_and_the_start_up_log_print_no_secret(tmp_path):
    env = _env(PG_DSN=f"host=127.0.0.1 port=9 dbname=x user=u password={SECRET}",
               ES_URL=f"http://elastic:{SECRET}@127.0.0.1:9", METRICS_PORT="0")
    shown = subprocess.run([sys.executable, "-m", "esindexer", "config"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0 and "ESINDEXER_ES_URL=http://elastic:***@127.0.0.1:9" in shown.stdout
    assert SECRET not in shown.stdout + shown.stderr
    # `run` against servers that do not answer: it logs its settings and the failures it
    # retries (a DSN and a URL in error messages); none of it may carry the password.
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "esindexer", "run"], env=env, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "retrying" not in log.read_text():
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    text = log.read_text()
    assert "esindexer starting" in text and "retrying" in text, text[-2000:]
    assert SECRET not in text, [line for line in text.splitlines() if SECRET in line]
