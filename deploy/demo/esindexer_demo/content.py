"""Persistent classes of the demo "site": users, folders and documents.

Plain attributes only (strings, numbers, lists, naive UTC datetimes and references
to other persistent objects), the kind of state a typical ZODB application stores.
Renaming this module or its classes breaks existing demo databases: recreate them
(``docker compose down -v``) after doing so.
"""

from __future__ import annotations

from datetime import datetime

from persistent import Persistent
from persistent.mapping import PersistentMapping


class User(Persistent):
    """An author; documents reference users, so references show up in the index."""

    def __init__(self, login: str, fullname: str, email: str, joined: datetime):
        self.login = login
        self.fullname = fullname
        self.email = email
        self.joined = joined


class Folder(PersistentMapping):
    """A container of documents keyed by name; removing a key is how documents are deleted."""

    def __init__(self, title: str, description: str = ""):
        super().__init__()
        self.title = title
        self.description = description


class Document(Persistent):
    """A page of text with metadata: the main thing people search for in the demo."""

    def __init__(self, title: str, body: str, tags: list[str], author: User, created: datetime):
        self.title = title
        self.body = body
        self.tags = tags
        self.author = author
        self.created = created
        self.modified = created
        self.revision = 1


class Site(PersistentMapping):
    """The root container: ``users``, ``folders`` and an OOBTree ``catalog``."""

    def __init__(self, title: str):
        super().__init__()
        self.title = title
        self.next_id = 1

    def new_name(self, prefix: str) -> str:
        """A name never used before in this site, even across restarts of the writer."""
        name = f"{prefix}-{self.next_id}"
        self.next_id += 1
        return name
