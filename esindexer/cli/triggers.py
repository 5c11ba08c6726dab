"""``esindexer install-trigger``: the notify and pack-deletion triggers, installed once."""

from __future__ import annotations

import argparse

from esindexer.cli.common import Command, connect
from esindexer.config import Settings


def _install(settings: Settings, args: argparse.Namespace) -> int:
    from esindexer.source import deletions
    from esindexer.source import notify as notification

    conn = connect(settings)
    try:
        notify = notification.install_trigger(conn)
        conn.commit()
        capture = deletions.install(conn)
    finally:
        conn.close()
    print(f"change notification trigger: {'installed' if notify else 'NOT installed (no privilege)'}")
    print(f"pack deletion trigger:       {'installed' if capture else 'NOT installed (no privilege)'}")
    return 0 if notify and capture else 1


COMMAND = Command(
    name="install-trigger",
    help="install the change-notification and pack-deletion triggers",
    description="Install, idempotently, the triggers esindexer uses: NOTIFY on commits "
                "(low latency) and capture of pack deletions. Run it as a role with DDL "
                "rights when the indexer's own role has none.",
    groups=(),
    settings=("pg_dsn",),
    run=_install,
)
