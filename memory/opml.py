"""OPML subscription lists, as feed readers move them: import a list into a tenant's feeds,
export a tenant's feeds as one.

Parsing is listparser's. An OPML file that does not parse adds nothing; within a good file, an
entry whose source is unusable (an unsupported scheme, a missing local file) is reported and the
others are added. Local files are exported as file:// URLs, which `import_opml` reads back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path
from xml.etree import ElementTree as ET

import listparser

from .errors import FeedError, InvalidInput
from .feeds import Feed, add_feed, list_feeds
from .store import MemoryStore, check_tenant

MAX_BYTES = 5 * 1024 * 1024


@dataclass
class Imported:
    added: list[Feed] = field(default_factory=list)
    existing: list[Feed] = field(default_factory=list)  # already subscribed: left as they were
    errors: list[tuple[str, str]] = field(default_factory=list)  # (source, why) not added


def read_opml(path: str | Path) -> bytes:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise FeedError(f"{path} is larger than {MAX_BYTES // 2**20} MiB: not a subscription list")
        return path.read_bytes()
    except OSError as e:
        raise FeedError(f"cannot read OPML file {path}: {e.strerror or e}") from e


def parse_opml(data: bytes) -> list[tuple[str, str | None]]:
    """(source, title) of every feed in an OPML document, in document order, without repeats.
    Raises FeedError for a document that is malformed or not OPML; an empty list is a list."""
    try:  # listparser is lenient: a truncated file would just list fewer feeds
        ET.fromstring(data)
    except ET.ParseError as e:
        raise FeedError(f"malformed OPML: {e}") from e
    result = listparser.parse(data)
    if result.bozo:
        raise FeedError(f"malformed OPML: {result.bozo_exception}")
    if not result.get("version"):
        raise FeedError("not an OPML subscription list")
    out: dict[str, str | None] = {}
    for f in result.feeds:
        url = (f.get("url") or "").strip()
        if url:
            out.setdefault(url, (f.get("title") or "").strip() or None)
    return list(out.items())


def import_opml(store: MemoryStore, data: bytes, tenant: str = "default") -> Imported:
    """Subscribe `tenant` to every feed the OPML document lists (idempotent)."""
    check_tenant(tenant)
    done = Imported()
    for source, _title in parse_opml(data):
        try:
            feed = add_feed(store, source, tenant)
        except InvalidInput as e:
            done.errors.append((source, str(e)))
            continue
        (done.added if feed.created else done.existing).append(feed)
    return done


def export_opml(store: MemoryStore, tenant: str = "default") -> str:
    """A tenant's feeds as an OPML 2.0 document."""
    check_tenant(tenant)
    root = ET.Element("opml", version="2.0")
    head = ET.SubElement(root, "head")
    ET.SubElement(head, "title").text = f"bakehouse feeds of {tenant}"
    ET.SubElement(head, "dateCreated").text = format_datetime(datetime.now(timezone.utc), usegmt=True)
    body = ET.SubElement(root, "body")
    for f in list_feeds(store, tenant):
        url = f.source if "://" in f.source else Path(f.source).as_uri()
        title = f.title or f.source
        ET.SubElement(body, "outline", type="rss", text=title, title=title, xmlUrl=url)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
