"""RSS 0.9x/1.0/2.0 and Atom feeds (URL or local file) -> `headline` memories.

A poll fetches (conditional GET for URLs, with a timeout and a size cap), parses with feedparser,
and stores each new entry as a headline, de-duplicated by guid / link (per feed, across polls)
and by content hash (per tenant). A source that is unreachable, malformed or not a feed
records the error on the feed row and stores nothing; what earlier polls stored stays.
"""
from __future__ import annotations

import calendar
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import feedparser
import httpx

from .db import utcnow
from .errors import FeedError, InvalidInput, UnknownFeed
from .screen import Verdict, screen_feed
from .store import MemoryStore, check_tenant, content_hash

TIMEOUT_S = 10.0
MAX_BYTES = 10 * 1024 * 1024  # a feed document larger than this is refused
MAX_NEW_PER_POLL = 200  # huge feeds are taken in slices of this many new entries per poll
SUMMARY_CHARS = 280
TITLE_CHARS = 500  # a headline longer than this is cut (a huge entry must not fail the poll)
USER_AGENT = "bakehouse-feeds/0.1"

# feedparser sets `bozo` for these while parsing the document fine.
_HARMLESS = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)


@dataclass(frozen=True)
class Feed:
    id: int
    tenant: str
    source: str
    title: str | None
    etag: str | None
    modified: str | None
    added_at: str
    last_polled_at: str | None
    last_ok_at: str | None
    last_error: str | None
    entries: int  # headlines stored from this feed so far
    every_minutes: float | None = None  # its own polling interval (None: the runtime's default)
    created: bool = field(default=True, compare=False)  # False: add_feed found it registered


@dataclass(frozen=True)
class PollResult:
    feed: Feed
    new: int = 0  # headlines stored by this poll
    seen: int = 0  # entries already stored (by guid/link/hash)
    skipped: int = 0  # entries without a title or summary
    more: bool = False  # capped: more new entries wait for the next poll
    not_modified: bool = False  # the server answered 304
    error: str | None = None


@dataclass(frozen=True)
class Fetched:
    body: bytes | None  # None: not modified
    etag: str | None = None
    modified: str | None = None


@dataclass(frozen=True)
class Entry:
    keys: tuple[str, ...]  # 'guid:...', 'link:...' (the content hash is checked as well)
    text: str
    published_at: str | None
    meta: dict
    raw: str = ""  # title and summary as the feed sent them (markup included), for memory.screen


@dataclass(frozen=True)
class Parsed:
    title: str | None
    entries: list[Entry]  # newest first
    skipped: int  # entries with neither title nor summary


# -- feed rows ----------------------------------------------------------------------------------

def add_feed(store: MemoryStore, source: str, tenant: str = "default",
             every_minutes: float | None = None) -> Feed:
    """Register a feed (http(s) URL, file:// URL or local path) for a tenant. Idempotent; a given
    `every_minutes` (its own polling interval) is set on the existing feed too."""
    check_tenant(tenant)
    source = normalise_source(source)
    if every_minutes is not None and not every_minutes > 0:
        raise InvalidInput(f"a feed's polling interval must be > 0 minutes, got {every_minutes!r}")
    now = utcnow()
    with store.transaction():
        store._ensure_tenant(tenant, now)
        cur = store.db.execute(
            "INSERT INTO feeds (tenant, source, added_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            [tenant, source, now],
        )
        if cur.rowcount:
            store._audit("feed.add", tenant=tenant, at=now, source=source)
        (feed_id,) = store.db.execute(
            "SELECT id FROM feeds WHERE tenant = ? AND source = ?", [tenant, source]
        ).fetchone()
        if every_minutes is not None:
            store.db.execute("UPDATE feeds SET every_minutes = ? WHERE id = ?", [every_minutes, feed_id])
        return replace(get_feed(store, feed_id), created=bool(cur.rowcount))


def normalise_source(source: str) -> str:
    """http(s) URLs stay as given; file:// URLs and paths become an absolute path (must exist)."""
    source = source.strip()
    scheme = urlparse(source).scheme.lower()
    if scheme in ("http", "https"):
        return source
    if scheme == "file":
        source = unquote(urlparse(source).path)
    elif scheme and len(scheme) > 1:  # one letter: a Windows drive
        raise InvalidInput(f"unsupported feed source {source!r}: use an http(s) URL or a file path")
    path = Path(source).expanduser().resolve()
    if not path.is_file():
        raise InvalidInput(f"feed file not found: {path}")
    return str(path)


_FEED_SELECT = """
SELECT f.*, (SELECT count(DISTINCT memory_id) FROM feed_items WHERE feed_id = f.id) AS entries
FROM feeds f
"""


def get_feed(store: MemoryStore, feed_id: int) -> Feed:
    row = next(store.db.query(_FEED_SELECT + " WHERE f.id = ?", [feed_id]), None)
    if row is None:
        raise UnknownFeed(feed_id)
    return Feed(**row)


def list_feeds(store: MemoryStore, tenant: str | None = None) -> list[Feed]:
    if tenant is not None:
        store.require_tenant(tenant)
    where, params = ("WHERE f.tenant = ?", [tenant]) if tenant else ("", [])
    return [Feed(**r) for r in store.db.query(f"{_FEED_SELECT} {where} ORDER BY f.id", params)]


# -- polling ------------------------------------------------------------------------------------

def due_feeds(store: MemoryStore, default_minutes: float, now: datetime | None = None) -> list[Feed]:
    """Feeds whose interval (their own, else `default_minutes`) has passed since their last poll."""
    now = now or datetime.now(timezone.utc)
    out = []
    for f in list_feeds(store):
        if f.last_polled_at is None:
            out.append(f)
            continue
        last = datetime.fromisoformat(f.last_polled_at.replace("Z", "+00:00"))
        if (now - last).total_seconds() >= 60 * (f.every_minutes or default_minutes):
            out.append(f)
    return out


def poll(
    store: MemoryStore,
    *,
    tenant: str | None = None,
    feed_id: int | None = None,
    timeout: float = TIMEOUT_S,
    max_new: int = MAX_NEW_PER_POLL,
    max_bytes: int = MAX_BYTES,
) -> list[PollResult]:
    """Poll every feed (or a tenant's, or one). One feed's failure never stops the others."""
    feeds = [get_feed(store, feed_id)] if feed_id is not None else list_feeds(store, tenant)
    return [poll_feed(store, f, timeout=timeout, max_new=max_new, max_bytes=max_bytes) for f in feeds]


def poll_feed(
    store: MemoryStore,
    feed: Feed,
    *,
    timeout: float = TIMEOUT_S,
    max_new: int = MAX_NEW_PER_POLL,
    max_bytes: int = MAX_BYTES,
) -> PollResult:
    # Fetch and parse outside any transaction: the write lock is never held over the network.
    try:
        fetched = fetch(feed.source, etag=feed.etag, modified=feed.modified, timeout=timeout,
                        max_bytes=max_bytes)
        parsed = None if fetched.body is None else parse(fetched.body)
    except FeedError as e:
        _record(store, feed.id, error=str(e))
        return PollResult(get_feed(store, feed.id), error=str(e))
    if parsed is None:
        _record(store, feed.id)
        return PollResult(get_feed(store, feed.id), not_modified=True)

    new = seen = 0
    more = False
    with store.transaction():
        for entry in parsed.entries:
            if _seen(store, feed.id, entry):
                seen += 1
                continue
            if new >= max_new:
                more = True
                break
            verdict = screen_entry(entry)
            m = store.add(feed.tenant, "headline", entry.text, source=f"feed:{feed.source}",
                          published_at=entry.published_at, meta=entry.meta,
                          admission="admitted" if verdict.clean else "quarantined",
                          admission_reason=verdict.reason)
            for key in entry.keys + (f"hash:{m.content_hash}",):
                store.db.execute(
                    "INSERT INTO feed_items (feed_id, key, memory_id) VALUES (?, ?, ?)"
                    " ON CONFLICT DO NOTHING", [feed.id, key, m.id],
                )
            new += m.created
            seen += not m.created  # the same text came from elsewhere first
        # A capped poll keeps no validators: the next one must get the whole document again.
        _record(store, feed.id, title=parsed.title,
                etag=None if more else fetched.etag, modified=None if more else fetched.modified)
    return PollResult(get_feed(store, feed.id), new=new, seen=seen, skipped=parsed.skipped, more=more)


def screen_entry(entry: Entry) -> Verdict:
    """Whether an entry reads as an order to the model, as the reader sees it or in its markup
    (hidden text, comments): such an entry is stored quarantined, out of prompts and bakes."""
    verdict = screen_feed(entry.text)
    return screen_feed(entry.raw) if verdict.clean and entry.raw else verdict


def _seen(store: MemoryStore, feed_id: int, entry: Entry) -> bool:
    keys = entry.keys + (f"hash:{content_hash(entry.text)}",)
    marks = ", ".join("?" for _ in keys)
    return store.db.execute(
        f"SELECT 1 FROM feed_items WHERE feed_id = ? AND key IN ({marks}) LIMIT 1", [feed_id, *keys]
    ).fetchone() is not None


def _record(store: MemoryStore, feed_id: int, *, error: str | None = None, **fields) -> None:
    now = utcnow()
    sets = {"last_polled_at": now, "last_error": error}
    if error is None:
        sets["last_ok_at"] = now
        sets.update(fields)
    with store.transaction():
        store.db["feeds"].update(feed_id, sets)


# -- fetching and parsing -----------------------------------------------------------------------

def fetch(
    source: str,
    *,
    etag: str | None = None,
    modified: str | None = None,
    timeout: float = TIMEOUT_S,
    max_bytes: int = MAX_BYTES,
) -> Fetched:
    """The feed document's bytes, or body=None when an http server says 304 Not Modified."""
    if urlparse(source).scheme.lower() not in ("http", "https"):
        try:
            with open(source, "rb") as f:
                body = f.read(max_bytes + 1)
        except OSError as e:
            raise FeedError(f"cannot read feed file {source}: {e.strerror or e}") from e
        if len(body) > max_bytes:
            raise FeedError(f"feed file {source} is larger than {max_bytes:,} bytes")
        return Fetched(body)

    headers = {"User-Agent": USER_AGENT}
    if etag:
        headers["If-None-Match"] = etag
    if modified:
        headers["If-Modified-Since"] = modified
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True) as client:
            with client.stream("GET", source, headers=headers) as r:
                if r.status_code == 304:
                    return Fetched(None, etag, modified)
                if r.status_code >= 400:
                    raise FeedError(f"HTTP {r.status_code} {r.reason_phrase} from {source}")
                chunks, size = [], 0
                for chunk in r.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise FeedError(f"feed at {source} is larger than {max_bytes:,} bytes")
                    chunks.append(chunk)
                return Fetched(b"".join(chunks), r.headers.get("etag"), r.headers.get("last-modified"))
    except httpx.TimeoutException as e:
        raise FeedError(f"timed out after {timeout:g}s fetching {source}") from e
    except httpx.HTTPError as e:
        raise FeedError(f"cannot fetch {source}: {e}") from e


def parse(body: bytes) -> Parsed:
    """The feed's title and entries. Raises FeedError for anything not a usable feed."""
    d = feedparser.parse(body)
    exc = d.get("bozo_exception")
    if d.get("bozo") and not isinstance(exc, _HARMLESS):
        # The lenient fallback parser would still return entries, possibly cut off: store none.
        raise FeedError(f"malformed feed: {exc}")
    if not d.get("version"):
        raise FeedError("not an RSS or Atom feed")
    # A feed with no entries yet (or none with a title or summary) is a feed: the poll finds 0 new.
    entries = [e for e in (_entry(raw) for raw in d.entries) if e is not None]
    # Newest first (undated last, document order kept among equals), so a capped poll takes
    # the freshest news and the next poll the following slice.
    entries.sort(key=lambda e: e.published_at or "", reverse=True)
    title = _plain(d.feed.get("title", ""), d.feed.get("title_detail")) or None
    return Parsed(title, entries, skipped=len(d.entries) - len(entries))


def _entry(raw) -> Entry | None:
    title = _shorten(_plain(raw.get("title", ""), raw.get("title_detail")), TITLE_CHARS)
    summary = _shorten(_plain(raw.get("summary", ""), raw.get("summary_detail")), SUMMARY_CHARS)
    if not title and not summary:
        return None
    if title and summary and not summary.startswith(title.rstrip(".")):
        text = f"{title} — {summary}"
    else:
        text = title or summary
    link = raw.get("link") or None
    guid = raw.get("id") or None
    keys = tuple(k for k in (guid and f"guid:{guid}", link and f"link:{link}") if k)
    stamp = raw.get("published_parsed") or raw.get("updated_parsed")
    published = (
        datetime.fromtimestamp(calendar.timegm(stamp), timezone.utc) if stamp else None
    )
    meta = {k: v for k, v in {"title": title, "link": link, "guid": guid}.items() if v}
    raw_text = "\n".join(str(raw.get(k) or "") for k in ("title", "summary"))
    return Entry(keys=keys, text=text, published_at=published and published.isoformat(), meta=meta, raw=raw_text)


class _TextOnly(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "li"):
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def _plain(value: str, detail: dict | None) -> str:
    """A feed text construct (plain text or HTML, per feedparser's detail) -> one line of text."""
    if "html" in ((detail or {}).get("type") or "text/html"):
        p = _TextOnly()
        p.feed(value)
        p.close()
        value = "".join(p.parts)
    return " ".join(value.split())


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + "…"
