"""Runs inside Plone's own interpreter (``zconsole run zope.conf site_script.py STEP``):
builds a real Plone 6 site with Plone's own code, changes it, and answers catalog
queries — the ground truth the index is compared with (issue 23).

It is not imported by esindexer or its tests' interpreter: Plone lives in its own
virtualenv (``scripts/plone``), so nothing here may import esindexer. Steps:

- ``build``: ``addPloneSite`` with the default content types, then content of every
  default type in nested folders, workflow transitions and versioned edits;
- ``change``: edits (new versions), a move, a rename, deletions, transitions;
- ``pack``: pack the database (history-free and history-preserving alike);
- ``--answer`` after any step: then also the comparison's catalog queries
  (tests/plone/queries.py) for the site as it is and the catalog's answers
  (``--edited=ID,ID``: the items an earlier ``change`` edited, whose new words are asked);
- ``brains``: the catalog's metadata of every content item (dates as ISO 8601 UTC);
- ``query``: read a JSON list of catalog queries from standard input and print, per
  query, the sorted UIDs ``portal_catalog.unrestrictedSearchResults`` returns (as an
  administrator: permissions do not filter); a query with ``sort_on`` keeps its order.

Every step prints one JSON line (``{"step": ..., ...}``) as its last line of output.
"""

from __future__ import annotations

import datetime
import json
import random
import sys

import transaction
from AccessControl.SecurityManagement import newSecurityManager
from Testing.makerequest import makerequest
from zope.component.hooks import setSite

SITE_ID = "Plone"
WORDS = ["alpha", "budget", "meeting", "review", "harbour", "lighthouse", "orchid", "quantum",
         "river", "summit", "tundra", "violin", "willow", "zephyr", "granite", "meadow"]
TYPES = ["Document", "News Item", "Event", "Link", "File", "Image", "Collection"]
#: A 1x1 transparent PNG (the Image type wants real image bytes).
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def _login(app):
    app = makerequest(app)
    admin = app.acl_users.getUserById("admin")
    if admin is None:  # a fresh database: the Zope manager the site is built by
        app.acl_users._doAddUser("admin", "admin", ["Manager"], [])
        transaction.commit()
        admin = app.acl_users.getUserById("admin")
    newSecurityManager(None, admin.__of__(app.acl_users))
    return app


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize()


def _rich(text: str):
    from plone.app.textfield.value import RichTextValue

    return RichTextValue(f"<p>{text}</p><p><strong>{text.split()[0]}</strong> end.</p>",
                         "text/html", "text/x-html-safe")


def build(app, folders: int, items: int, seed: int) -> dict:
    from plone import api
    from plone.namedfile.file import NamedBlobFile, NamedBlobImage
    from Products.CMFPlone.factory import addPloneSite

    rng = random.Random(seed)
    if SITE_ID not in app.objectIds():
        addPloneSite(app, SITE_ID, extension_ids=["plone.app.contenttypes:default"], setup_content=False)
        transaction.commit()
    portal = app[SITE_ID]
    setSite(portal)
    repository = api.portal.get_tool("portal_repository")
    made = {"folders": 0, "items": 0}
    parents = [portal]
    for f in range(folders):
        parent = rng.choice(parents)
        folder = api.content.create(container=parent, type="Folder", id=f"folder-{f}",
                                    title=f"Folder {f} {_sentence(rng, 2)}")
        if rng.random() < 0.6:
            api.content.transition(obj=folder, transition="publish")
        parents.append(folder)
        made["folders"] += 1
    start = datetime.datetime(2024, 1, 1, 9, 0)
    for i in range(items):
        kind = TYPES[i % len(TYPES)]
        parent = rng.choice(parents)
        fields: dict = {"title": f"{kind} {i} {_sentence(rng, 3)}", "description": _sentence(rng, 8),
                        "subject": tuple(sorted(set(rng.sample(WORDS, 2))))}
        if kind in ("Document", "News Item", "Event"):
            fields["text"] = _rich(f"{_sentence(rng, 12)} body{i}")
        if kind == "Event":
            begin = start + datetime.timedelta(days=rng.randint(0, 700), hours=rng.randint(0, 8))
            fields["start"], fields["end"] = begin, begin + datetime.timedelta(hours=2)
        if kind == "Link":
            fields["remoteUrl"] = f"https://example.org/{i}"
        if kind == "Collection":
            fields["query"] = [{"i": "portal_type", "o": "plone.app.querystring.operation.selection.any",
                                "v": ["Document", "News Item"]}]
        if kind == "File":
            fields["file"] = NamedBlobFile(data=f"file {i} {_sentence(rng, 20)}".encode(), filename=f"notes-{i}.txt",
                                           contentType="text/plain")
        if kind == "Image":
            fields["image"] = NamedBlobImage(data=PNG, filename=f"pixel-{i}.png", contentType="image/png")
        obj = api.content.create(container=parent, type=kind, id=f"item-{i}", **fields)
        effective = start + datetime.timedelta(days=rng.randint(0, 700))
        obj.setEffectiveDate(effective.strftime("%Y/%m/%d %H:%M:%S UTC"))
        if kind in ("File", "Image"):  # no workflow of their own in Plone 6
            pass
        elif rng.random() < 0.5:
            api.content.transition(obj=obj, transition="publish")
        elif rng.random() < 0.3:
            api.content.transition(obj=obj, transition="submit")
        obj.reindexObject()
        if kind in ("Document", "News Item") and rng.random() < 0.4:
            repository.save(obj=obj, comment="first version")
            obj.title = obj.title + " (edited)"
            obj.reindexObject()
            repository.save(obj=obj, comment="edited")
        made["items"] += 1
        if i % 100 == 99:
            transaction.commit()
    transaction.commit()
    return made


def change(app, seed: int) -> dict:
    from plone import api

    rng = random.Random(seed)
    portal = app[SITE_ID]
    setSite(portal)
    catalog = api.portal.get_tool("portal_catalog")
    repository = api.portal.get_tool("portal_repository")
    brains = sorted(catalog.unrestrictedSearchResults(portal_type=["Document", "News Item"]), key=lambda b: b.getPath())
    done = {"edited": 0, "moved": 0, "renamed": 0, "deleted": 0, "transitions": 0}
    for brain in rng.sample(brains, min(10, len(brains))):
        obj = brain._unrestrictedGetObject()
        obj.title = f"Changed {obj.getId()} {_sentence(rng, 2)}"
        obj.text = _rich(f"rewritten {_sentence(rng, 6)} fresh{obj.getId().replace('-', '')}")
        obj.reindexObject()
        repository.save(obj=obj, comment="changed")
        done["edited"] += 1
        done.setdefault("edited_ids", []).append(obj.getId())
    folders = sorted(catalog.unrestrictedSearchResults(portal_type="Folder"), key=lambda b: b.getPath())
    source, target = folders[-1]._unrestrictedGetObject(), folders[0]._unrestrictedGetObject()
    if source.getPhysicalPath()[: len(target.getPhysicalPath())] != target.getPhysicalPath() \
            and target.getPhysicalPath()[: len(source.getPhysicalPath())] != source.getPhysicalPath():
        api.content.move(source=source, target=target)
        done["moved"] += 1
    transaction.commit()
    items = sorted(catalog.unrestrictedSearchResults(portal_type="Event"), key=lambda b: b.getPath())
    if items:
        api.content.rename(obj=items[0]._unrestrictedGetObject(), new_id="renamed-event")
        done["renamed"] += 1
    for brain in sorted(catalog.unrestrictedSearchResults(portal_type=["Link", "File"]), key=lambda b: b.getPath())[:5]:
        api.content.delete(obj=brain._unrestrictedGetObject(), check_linkintegrity=False)
        done["deleted"] += 1
    for brain in sorted(catalog.unrestrictedSearchResults(review_state="private", portal_type="Document"),
                        key=lambda b: b.getPath())[:5]:
        api.content.transition(obj=brain._unrestrictedGetObject(), transition="publish")
        done["transitions"] += 1
    transaction.commit()
    return done


def pack(app) -> dict:
    app._p_jar.db().pack()
    return {"packed": True}


def _plain(value):
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _catalog_query(query: dict) -> dict:
    """A JSON query as a catalog query: ``{"range": "min", "query": "ISO"}`` dates."""
    from DateTime import DateTime

    out = {}
    for key, value in query.items():
        if isinstance(value, dict) and "query" in value and key not in ("path",):
            q = value["query"]
            q = [DateTime(v) for v in q] if isinstance(q, list) else DateTime(q) if isinstance(q, str) and "T" in q else q
            out[key] = dict(value, query=q)
        else:
            out[key] = value
    return out


def query(app, queries: list) -> dict:
    from plone import api

    portal = app[SITE_ID]
    setSite(portal)
    catalog = api.portal.get_tool("portal_catalog")
    answers = []
    for q in queries:
        brains = catalog.unrestrictedSearchResults(**_catalog_query(q))
        uids = [b.UID for b in brains]
        answers.append(uids if "sort_on" in q else sorted(uids))
    return {"answers": answers}


def _iso(value):
    """A catalog date (DateTime or datetime) as ISO 8601 UTC text; None stays None."""
    from DateTime import DateTime

    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, DateTime):
        return value.toZone("UTC").ISO8601()
    return None  # None or Missing.Value: the item has no such metadata


def brains(app) -> dict:
    """The catalog's metadata of every content item (as the catalog stores it)."""
    from plone import api

    portal = app[SITE_ID]
    setSite(portal)
    catalog = api.portal.get_tool("portal_catalog")
    out = []
    for b in catalog.unrestrictedSearchResults(path={"query": "/" + SITE_ID}):
        out.append({"uid": b.UID, "path": b.getPath(), "portal_type": b.portal_type, "id": b.getId,
                    "title": b.Title, "description": b.Description, "subject": list(b.Subject or ()),
                    "creators": list(b.listCreators or ()), "review_state": b.review_state or None,
                    "is_folderish": bool(b.is_folderish), "effective": _iso(b.effective),
                    "expires": _iso(b.expires), "created": _iso(b.created), "modified": _iso(b.modified),
                    "start": _iso(b.start), "end": _iso(b.end),
                    "mime_type": b.mime_type if isinstance(b.mime_type, str) else None})
    return {"brains": sorted(out, key=lambda b: b["path"])}


def _queries_module():
    """tests/plone/queries.py (standard library only), loaded by its path: this interpreter
    is Plone's, where neither esindexer nor the tests package is importable."""
    import importlib.util
    import os

    script = next(a for a in sys.argv if a.endswith("site_script.py"))  # zconsole gives no __file__
    path = os.path.join(os.path.dirname(os.path.abspath(script)), "queries.py")
    spec = importlib.util.spec_from_file_location("plone_queries", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def answer(app, edited: list) -> dict:
    """The comparison's catalog queries for the site as it is now, and the catalog's answers
    (``answers``), with every cataloged item's UID (``every``): what the test compares the
    index with, computed in the same run as the step before it (a Zope start takes seconds)."""
    queries_module = _queries_module()
    items = brains(app)["brains"]
    folders = sorted(b["path"] for b in items if b["portal_type"] == "Folder")
    words = queries_module.BODY_WORDS + [f"fresh{name.replace('-', '')}" for name in edited]
    queries = queries_module.catalog_queries(folders, [b["modified"] for b in items], words)
    answers = query(app, queries + [{"path": {"query": "/" + SITE_ID}}])["answers"]
    return {"queries": queries, "answers": answers[:-1], "every": answers[-1]}


def main(app, argv: list[str]) -> None:
    answering = "--answer" in argv
    edited = [name for a in argv if a.startswith("--edited=") for name in a[len("--edited="):].split(",") if name]
    argv = [a for a in argv if a != "--answer" and not a.startswith("--edited=")]
    step = argv[0]
    app = _login(app)
    if step == "build":
        folders, items, seed = (int(v) for v in argv[1:4])
        result = build(app, folders, items, seed)
    elif step == "change":
        result = change(app, int(argv[1]))
    elif step == "pack":
        result = pack(app)
    elif step == "query":
        result = query(app, json.load(sys.stdin))
    elif step == "brains":
        result = brains(app)
    else:
        raise SystemExit(f"unknown step {step!r}")
    if answering:
        transaction.commit()
        result = {**result, "catalog": answer(app, result.get("edited_ids", edited))}
    print(json.dumps({"step": step, **_plain(result)}))


def _arguments(argv: list[str]) -> list[str]:
    """The step and its arguments: what follows this script in ``zconsole run CONF SCRIPT ...``."""
    for n, arg in enumerate(argv):
        if arg.endswith("site_script.py"):
            return argv[n + 1:]
    raise SystemExit("run as: zconsole run zope.conf site_script.py STEP [ARGS]")


if "app" in globals():
    main(globals()["app"], _arguments(sys.argv))
