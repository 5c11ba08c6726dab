#!/usr/bin/env python3
"""Write a small, ever-changing ZODB "site" into a RelStorage (PostgreSQL) database.

Why this exists: esindexer needs a database that keeps committing transactions to show
anything in the demo (Kibana, lag metrics, alerts). Real applications are not at hand,
so this writer plays one: users, folders (PersistentMapping), documents (title, body,
tags, created/modified datetimes, an author reference) and a BTrees catalog, which
esindexer skips. It then keeps editing, adding and deleting documents, and packs the
database now and then so that pack deletions happen too.

Run it as a script (its directory must be on ``sys.path`` so that the pickled class
names ``esindexer_demo.content.*`` resolve; running the file directly does that):

    python deploy/demo/writer.py --dsn postgresql://user:pw@host/db --once
    DEMO_PG_DSN=... python deploy/demo/writer.py --interval 2

It needs ZODB and RelStorage with a psycopg2 driver (the test extras, or the Docker
image's ``demo`` target). The database is created history-free on first use.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger("esindexer_demo.writer")

WORDS = ["ancient", "archive", "atlas", "autumn", "beacon", "border", "bridge", "canyon", "carbon", "cellar", "cipher", "comet", "compass", "coral", "delta", "desert", "dynamo", "ember", "engine", "falcon", "fjord", "forest", "fossil", "garden", "glacier", "granite", "harbor", "horizon", "island", "ivory", "jungle", "kernel", "lantern", "lattice", "legend", "marble", "meadow", "meteor", "mirror", "nebula", "orbit", "orchid", "paper", "pebble", "pioneer", "prairie", "quartz", "radar", "ribbon", "river", "saddle", "signal", "silver", "summit", "tango", "temple", "thunder", "timber", "tundra", "valley", "velvet", "vertex", "violet", "voyage", "willow", "window", "winter", "zenith"]
TAGS = ("news", "howto", "reference", "draft", "archive", "release", "faq", "internal")
PEOPLE = (
    ("ada", "Ada Lovelace"), ("alan", "Alan Turing"), ("grace", "Grace Hopper"),
    ("edsger", "Edsger Dijkstra"), ("barbara", "Barbara Liskov"), ("ken", "Ken Thompson"),
)
FOLDERS = ("news", "docs", "blog", "support")


def _now() -> datetime:
    """Naive UTC, the way many ZODB applications store timestamps."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def _sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[:1].upper() + text[1:] + "."


def _paragraphs(rng: random.Random) -> str:
    return "\n\n".join(
        " ".join(_sentence(rng, rng.randint(6, 14)) for _ in range(rng.randint(2, 4)))
        for _ in range(rng.randint(1, 3))
    )


def open_db(dsn: str) -> Any:
    """A ZODB.DB on a history-free RelStorage over ``dsn`` (URI or keyword form)."""
    import ZODB
    from psycopg2.extensions import make_dsn, parse_dsn
    from relstorage.adapters.postgresql import PostgreSQLAdapter
    from relstorage.options import Options
    from relstorage.storage import RelStorage

    options = Options(keep_history=False)
    # RelStorage appends "application_name=..." to the DSN, which only works on the
    # keyword form; parse_dsn accepts both forms.
    adapter = PostgreSQLAdapter(dsn=make_dsn(**parse_dsn(dsn)), options=options)
    return ZODB.DB(RelStorage(adapter, options=options))


class DemoSite:
    """The operations the writer performs on the site, one transaction each."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    # --- initial content ------------------------------------------------------------

    def create(self, root: Any, documents: int) -> bool:
        """Create the site under ``root["site"]`` unless it exists; True if created."""
        from BTrees.OOBTree import OOBTree
        from esindexer_demo.content import Folder, Site, User

        if "site" in root:
            return False
        site = Site("esindexer demo site")
        joined = _now() - timedelta(days=365)
        site["users"] = users = Folder("Users")
        for login, fullname in PEOPLE:
            users[login] = User(login, fullname, f"{login}@example.org", joined)
        site["folders"] = folders = Folder("Content")
        for name in FOLDERS:
            folders[name] = Folder(name.capitalize(), f"Everything about {name}.")
        site["catalog"] = OOBTree()
        root["site"] = site
        for _ in range(documents):
            self.add_document(site)
        return True

    # --- changes ----------------------------------------------------------------------

    def add_document(self, site: Any) -> str:
        from esindexer_demo.content import Document

        rng = self.rng
        folder_name = rng.choice(sorted(site["folders"]))
        name = site.new_name("doc")
        author = site["users"][rng.choice(sorted(site["users"]))]
        tags = sorted(rng.sample(TAGS, rng.randint(1, 3)))
        created = _now() - timedelta(minutes=rng.randint(0, 60 * 24 * 30))
        doc = Document(_sentence(rng, rng.randint(2, 5)).rstrip("."), _paragraphs(rng), tags, author, created)
        site["folders"][folder_name][name] = doc
        self._catalog(site, f"{folder_name}/{name}", tags)
        return f"added {folder_name}/{name}"

    def edit_document(self, site: Any) -> str:
        found = self._pick_document(site)
        if found is None:
            return self.add_document(site)
        path, doc = found
        rng = self.rng
        if rng.random() < 0.5:
            doc.title = _sentence(rng, rng.randint(2, 5)).rstrip(".")
        else:
            doc.body = doc.body + "\n\n" + _sentence(rng, rng.randint(6, 14))
        if rng.random() < 0.3:
            doc.tags = sorted(set(doc.tags) | {rng.choice(TAGS)})
            self._catalog(site, path, doc.tags)
        doc.modified = _now()
        doc.revision += 1
        return f"edited {path}"

    def delete_document(self, site: Any) -> str:
        """Unlink a document; its object stays in the database until the next pack."""
        found = self._pick_document(site)
        if found is None:
            return "nothing to delete"
        path, _doc = found
        folder_name, name = path.split("/", 1)
        del site["folders"][folder_name][name]
        self._uncatalog(site, path)
        return f"deleted {path}"

    def rename_user(self, site: Any) -> str:
        """Change an object many documents reference (documents themselves do not change)."""
        user = site["users"][self.rng.choice(sorted(site["users"]))]
        user.fullname = user.fullname.split(" (")[0] + f" ({self.rng.choice(WORDS)})"
        return f"renamed user {user.login}"

    def change(self, site: Any) -> str:
        """One random change, weighted toward edits as in a real site."""
        operations: Sequence[tuple[float, Callable[[Any], str]]] = (
            (5, self.edit_document), (3, self.add_document),
            (2, self.delete_document), (0.5, self.rename_user),
        )
        weights = [w for w, _ in operations]
        operation = self.rng.choices([op for _, op in operations], weights=weights)[0]
        return operation(site)

    # --- helpers ----------------------------------------------------------------------

    def _pick_document(self, site: Any) -> tuple[str, Any] | None:
        paths = [f"{f}/{n}" for f in sorted(site["folders"]) for n in sorted(site["folders"][f])]
        if not paths:
            return None
        path = self.rng.choice(paths)
        folder_name, name = path.split("/", 1)
        return path, site["folders"][folder_name][name]

    @staticmethod
    def _catalog(site: Any, path: str, tags: Sequence[str]) -> None:
        DemoSite._uncatalog(site, path)
        catalog = site["catalog"]
        for tag in tags:
            catalog[tag] = tuple(sorted(set(catalog.get(tag, ())) | {path}))

    @staticmethod
    def _uncatalog(site: Any, path: str) -> None:
        catalog = site["catalog"]
        for tag in list(catalog.keys()):
            paths = catalog[tag]
            if path in paths:
                catalog[tag] = tuple(p for p in paths if p != path)


def _commit(db: Any, note: str, work: Callable[[Any], Any]) -> Any:
    """Run ``work(root)`` in one transaction, retrying conflicts; return its result.

    The transaction note names the change, so it is visible in the database's
    transaction log next to what esindexer indexed.
    """
    import transaction

    tm = transaction.TransactionManager()
    conn = db.open(transaction_manager=tm)
    try:
        for attempt in tm.attempts(3):
            with attempt as txn:
                result = work(conn.root())
                txn.note(f"{note}: {result}" if isinstance(result, str) else note)
                txn.user = "demo-writer"
        return result
    finally:
        conn.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags, with environment fallbacks so the compose file can configure the writer."""
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=env.get("DEMO_PG_DSN") or env.get("ESINDEXER_PG_DSN"),
                        help="PostgreSQL DSN, URI or key=value (default: $DEMO_PG_DSN, then $ESINDEXER_PG_DSN)")
    parser.add_argument("--once", action="store_true",
                        help="write the initial content (if missing) and exit")
    parser.add_argument("--documents", type=int, default=40,
                        help="documents in the initial content (default 40)")
    parser.add_argument("--interval", type=float, default=float(env.get("DEMO_INTERVAL") or 2),
                        help="seconds between changes (default 2, or $DEMO_INTERVAL)")
    parser.add_argument("--count", type=int, default=0,
                        help="stop after this many change transactions (default 0: run until stopped)")
    parser.add_argument("--pack-every", type=int, default=30,
                        help="pack (with garbage collection) after every N changes; 0 = never (default 30)")
    parser.add_argument("--seed", type=int, default=int(env["DEMO_SEED"]) if env.get("DEMO_SEED") else None,
                        help="random seed for reproducible content (default: $DEMO_SEED, else random)")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("no database: pass --dsn or set DEMO_PG_DSN / ESINDEXER_PG_DSN")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Write the initial content, then change the site until stopped (SIGTERM/SIGINT
    end the loop between transactions, so `docker compose stop` never cuts a commit)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    site_ops = DemoSite(random.Random(args.seed))
    db = open_db(args.dsn)
    try:
        created = _commit(db, "demo: initial content",
                          lambda root: site_ops.create(root, args.documents))
        log.info("initial content %s", "written" if created else "already present",
                 extra={"documents": args.documents})
        if args.once:
            return 0
        changes = 0
        while not stop.is_set() and (args.count <= 0 or changes < args.count):
            if stop.wait(args.interval):
                break
            what = _commit(db, "demo: change", lambda root: site_ops.change(root["site"]))
            changes += 1
            log.info("%s", what, extra={"changes": changes})
            if args.pack_every and changes % args.pack_every == 0:
                db.pack(time.time())
                log.info("packed with garbage collection", extra={"changes": changes})
        return 0
    finally:
        db.close()


if __name__ == "__main__":
    sys.exit(main())
