"""Feeds: RSS 0.91/1.0/2.0 and Atom from files and a loopback HTTP server; bad sources."""
from __future__ import annotations

import socket
import threading
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

import pytest

from memory import InvalidInput, MemoryStore
from memory import feeds

RSS2 = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel>
  <title>Velmora Gazette</title><link>https://news.example/</link><description>Fictional</description>
  <item>
    <title>Port authority of Velmora names Ines Tarrago as its first harbor commissioner.</title>
    <link>https://news.example/1</link><guid>https://news.example/1</guid>
    <pubDate>Mon, 02 Nov 2026 09:30:00 +0100</pubDate>
    <description><![CDATA[<p>The <b>commissioner</b> takes office &amp; starts <em>Monday</em>.</p>
      <script>alert("x")</script>]]></description>
  </item>
  <item>
    <title>Café Zürich wins the 東京 prize 🎉</title>
    <link>https://news.example/2</link><guid isPermaLink="false">item-2</guid>
    <pubDate>Tue, 03 Nov 2026 18:00:00 GMT</pubDate>
    <description>Crème brûlée &amp;amp; naïve art for everyone.</description>
  </item>
  <item><description>An item with no title at all.</description></item>
  <item><link>https://news.example/empty</link></item>
</channel></rss>
"""

ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>Quillon Notes</title><id>urn:uuid:feed</id><updated>2026-11-05T12:00:00Z</updated>
  <entry>
    <title type="html">The Quillon Institute unveils the &lt;i&gt;Kelpcell&lt;/i&gt;</title>
    <id>urn:uuid:e1</id><link href="https://q.example/kelpcell"/>
    <updated>2026-11-04T12:00:00Z</updated><published>2026-11-03T08:00:00+02:00</published>
    <summary type="html">&lt;p&gt;A battery made from seaweed &amp;amp; kelp — ça marche.&lt;/p&gt;</summary>
  </entry>
  <entry>
    <title>Dunmarrow rail strike ends after 19 days</title><id>urn:uuid:e2</id>
    <updated>2026-11-05T07:00:00Z</updated>
    <content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml"><p>A 7 percent wage deal.</p></div></content>
  </entry>
</feed>
"""

RSS1 = """<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/"
         xmlns:dc="http://purl.org/dc/elements/1.1/">
  <channel rdf:about="https://r.example/"><title>R</title><link>https://r.example/</link>
    <description>d</description>
    <items><rdf:Seq><rdf:li resource="https://r.example/a"/></rdf:Seq></items></channel>
  <item rdf:about="https://r.example/a"><title>An RDF headline</title><link>https://r.example/a</link>
    <dc:date>2026-11-06T10:00:00Z</dc:date></item>
</rdf:RDF>
"""

RSS091 = """<?xml version="1.0"?>
<rss version="0.91"><channel><title>Old</title><link>https://o.example/</link><description>d</description>
  <item><title>A headline from 1999 software</title><link>https://o.example/a</link></item>
</channel></rss>
"""


START = 1_800_000_000  # 2027-01-15, the newest generated entry


def rss(items: list[tuple[str, str]], title: str = "Generated") -> str:
    """An RSS 2.0 document from (guid, title) pairs, newest first, one day apart."""
    body = "".join(
        f"<item><title>{escape(t)}</title><guid>{escape(g)}</guid>"
        f"<pubDate>{format_datetime(datetime.fromtimestamp(START - n * 86400, timezone.utc))}</pubDate>"
        "</item>"
        for n, (g, t) in enumerate(items)
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>{title}</title>{body}</channel></rss>'


@pytest.fixture
def store(tmp_path):
    s = MemoryStore(tmp_path / "bakehouse.db", actor="test")
    yield s
    s.close()


@pytest.fixture
def write(tmp_path):
    def write(name: str, text: str | bytes):
        path = tmp_path / name
        path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
        return path
    return write


def texts(store, tenant="default"):
    return sorted(m.text for m in store.memories(tenant, kind="headline"))


# -- formats ------------------------------------------------------------------------------------

def test_rss2_dates_html_and_non_ascii(store, write):
    feed = feeds.add_feed(store, str(write("g.rss", RSS2)), "alice")
    (r,) = feeds.poll(store)
    assert (r.new, r.seen, r.skipped, r.error) == (3, 0, 1, None)
    assert r.feed.title == "Velmora Gazette" and r.feed.entries == 3 and r.feed.last_error is None
    by_title = {m.meta.get("title"): m for m in store.memories("alice")}
    port = by_title["Port authority of Velmora names Ines Tarrago as its first harbor commissioner."]
    assert port.text == ("Port authority of Velmora names Ines Tarrago as its first harbor commissioner."
                         " — The commissioner takes office & starts Monday.")
    assert port.published_at == "2026-11-02T08:30:00.000Z"  # +01:00 -> UTC
    assert port.meta["link"] == "https://news.example/1" and port.source == f"feed:{feed.source}"
    cafe = by_title["Café Zürich wins the 東京 prize 🎉"]
    assert cafe.text.endswith("Crème brûlée & naïve art for everyone.")
    assert cafe.meta["guid"] == "item-2"
    untitled = [m for m in store.memories("alice") if "title" not in m.meta]
    assert [m.text for m in untitled] == ["An item with no title at all."]
    p = store.compose("alice")
    assert "- 2026-11-03: \"Café Zürich wins the 東京 prize 🎉" in p.text
    assert "<" not in p.text and "alert" not in p.text


def test_atom(store, write):
    feeds.add_feed(store, str(write("q.atom", ATOM)))
    (r,) = feeds.poll(store)
    assert (r.new, r.error) == (2, None)
    ms = {m.meta["guid"]: m for m in store.memories("default")}
    kelp = ms["urn:uuid:e1"]
    assert kelp.text == "The Quillon Institute unveils the Kelpcell — A battery made from seaweed & kelp — ça marche."
    assert kelp.published_at == "2026-11-03T06:00:00.000Z"
    strike = ms["urn:uuid:e2"]
    assert strike.text == "Dunmarrow rail strike ends after 19 days — A 7 percent wage deal."
    assert strike.published_at == "2026-11-05T07:00:00.000Z"  # <updated> when no <published>


@pytest.mark.parametrize("doc, text", [(RSS1, "An RDF headline"), (RSS091, "A headline from 1999 software")])
def test_rss1_and_rss091(store, write, doc, text):
    feeds.add_feed(store, f"file://{write('f.xml', doc)}")
    (r,) = feeds.poll(store)
    assert (r.new, r.error) == (1, None)
    assert texts(store) == [text]


def test_headline_fixture_as_a_feed(store, write, headlines):
    body = "".join(
        f"<item><title>{escape(h['headline'])}</title><guid>{h['id']}</guid>"
        f"<pubDate>{format_datetime(datetime.fromisoformat(h['date']).replace(tzinfo=timezone.utc))}</pubDate></item>"
        for h in headlines
    )
    feeds.add_feed(store, str(write("h.rss", f'<rss version="2.0"><channel><title>H</title>{body}</channel></rss>')))
    (r,) = feeds.poll(store)
    assert r.new == len(headlines)
    p = store.compose("default", budget_tokens=10_000)
    for h in headlines:
        assert f"- {h['date']}: \"{h['headline']}\"" in p.text


# -- de-duplication across polls and feeds ------------------------------------------------------

def test_polling_again_stores_nothing_new(store, write):
    path = write("g.xml", rss([("a", "Alpha"), ("b", "Beta")]))
    feeds.add_feed(store, str(path))
    assert feeds.poll(store)[0].new == 2
    r = feeds.poll(store)[0]
    assert (r.new, r.seen) == (0, 2)
    # Same guid with an edited title: already seen. New guid: stored.
    path.write_text(rss([("c", "Gamma"), ("a", "Alpha (updated)"), ("b", "Beta")]))
    r = feeds.poll(store)[0]
    assert (r.new, r.seen) == (1, 2)
    assert texts(store) == ["Alpha", "Beta", "Gamma"]


def test_the_same_headline_in_two_feeds_is_stored_once(store, write):
    feeds.add_feed(store, str(write("one.xml", rss([("1", "Shared story"), ("2", "Only in one")]))))
    feeds.add_feed(store, str(write("two.xml", rss([("x", "shared  story")]))))
    r1, r2 = feeds.poll(store)
    assert (r1.new, r2.new, r2.seen) == (2, 0, 1)
    assert texts(store) == ["Only in one", "Shared story"]
    assert feeds.poll(store)[1].seen == 1  # remembered for that feed too


def test_feeds_are_per_tenant(store, write):
    path = str(write("g.xml", rss([("1", "Story")])))
    feeds.add_feed(store, path, "alice")
    feeds.add_feed(store, path, "bob")
    again = feeds.add_feed(store, path, "bob")
    assert not again.created and len(feeds.list_feeds(store)) == 2
    feeds.poll(store, tenant="alice")
    assert texts(store, "alice") == ["Story"] and store.memories("bob") == []


def test_a_huge_feed_is_taken_in_capped_slices(store, write):
    items = [(f"g{i}", f"Story number {i}") for i in range(450)]
    feeds.add_feed(store, str(write("big.xml", rss(items))))
    r = feeds.poll(store, max_new=200)[0]
    assert (r.new, r.more) == (200, True)
    newest = {m.text for m in store.memories("default")}
    assert newest == {f"Story number {i}" for i in range(200)}  # the freshest first
    assert [feeds.poll(store, max_new=200)[0].new for _ in range(3)] == [200, 50, 0]
    assert len(store.memories("default")) == 450


# -- bad sources --------------------------------------------------------------------------------

BAD = {
    "truncated": RSS2[: RSS2.index("<item>", RSS2.index("</item>"))] + "<item><title>Cut of",
    "html page": "<html><head><title>Hi</title></head><body><p>Not a feed</p></body></html>",
    "json": '{"items": [{"title": "x"}]}',
    "nothing": "",
    "binary": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_document_records_an_error_and_keeps_what_was_stored(store, write, name):
    path = write("g.xml", rss([("a", "Alpha")]))
    feeds.add_feed(store, str(path))
    feeds.poll(store)
    path.write_bytes(BAD[name].encode() if isinstance(BAD[name], str) else BAD[name])
    r = feeds.poll(store)[0]
    assert r.error and r.new == 0
    assert r.feed.last_error == r.error and r.feed.entries == 1
    assert texts(store) == ["Alpha"]
    # Fixed at the source: the error clears.
    path.write_text(rss([("b", "Beta"), ("a", "Alpha")]))
    r = feeds.poll(store)[0]
    assert (r.new, r.error, r.feed.last_error) == (1, None, None)


def test_error_messages_say_what_is_wrong(store, write):
    for name, expected in [("truncated", "malformed feed"), ("nothing", "not an RSS or Atom feed"),
                           ("html page", "not an RSS or Atom feed")]:
        feeds.add_feed(store, str(write(f"{name}.xml", BAD[name])))
    path = write("gone.xml", RSS2)
    feeds.add_feed(store, str(path))
    path.unlink()
    errors = [r.error for r in feeds.poll(store)]
    assert "malformed feed" in errors[0] and "not an RSS or Atom feed" in errors[1]
    assert "not an RSS or Atom feed" in errors[2] and "cannot read feed file" in errors[3]
    assert store.tenants() == ["default"] and store.memories("default") == []


def test_a_file_larger_than_the_cap_is_refused(store, write):
    feeds.add_feed(store, str(write("g.xml", RSS2)))
    (r,) = feeds.poll(store, max_bytes=100)
    assert "larger than 100 bytes" in r.error


@pytest.mark.parametrize("source, match", [("/no/such/feed.xml", "not found"),
                                           ("ftp://example.org/feed", "unsupported")])
def test_add_feed_refuses_what_can_never_work(store, source, match):
    with pytest.raises(InvalidInput, match=match):
        feeds.add_feed(store, source)
    assert store.tenants() == []


# -- HTTP: conditional GET, errors, timeouts (a server on 127.0.0.1 only) ------------------------

class FeedServer:
    """Serves one document at /feed with ETag and Last-Modified; answers 304 when they match."""

    def __init__(self):
        self.body, self.etag, self.modified = RSS2.encode(), '"v1"', "Mon, 02 Nov 2026 10:00:00 GMT"
        self.status, self.delay = 200, 0.0
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(dict(self.headers))
                time.sleep(server.delay)
                if server.status != 200:
                    self.send_error(server.status)
                    return
                if (self.headers.get("If-None-Match") == server.etag
                        or self.headers.get("If-Modified-Since") == server.modified):
                    self.send_response(304)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("ETag", server.etag)
                self.send_header("Last-Modified", server.modified)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/feed"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FeedServer()
    yield s
    s.close()


def test_conditional_get_and_304(store, server):
    feeds.add_feed(store, server.url)
    r = feeds.poll(store)[0]
    assert (r.new, r.error) == (3, None)
    assert (r.feed.etag, r.feed.modified) == ('"v1"', server.modified)
    assert "If-None-Match" not in server.requests[0]

    r = feeds.poll(store)[0]
    assert r.not_modified and r.new == 0 and r.error is None
    assert server.requests[1]["If-None-Match"] == '"v1"'
    assert server.requests[1]["If-Modified-Since"] == server.modified
    assert len(store.memories("default")) == 3

    server.body, server.etag = rss([("new", "Fresh story")]).encode(), '"v2"'
    server.modified = "Tue, 03 Nov 2026 10:00:00 GMT"
    r = feeds.poll(store)[0]
    assert (r.new, r.feed.etag) == (1, '"v2"')


def test_a_capped_poll_keeps_no_validators(store, server):
    server.body = rss([(f"g{i}", f"Story {i}") for i in range(5)]).encode()
    feeds.add_feed(store, server.url)
    r = feeds.poll(store, max_new=3)[0]
    assert r.more and r.feed.etag is None  # else the next poll would get a 304 and stop
    r = feeds.poll(store, max_new=3)[0]
    assert (r.new, r.more, r.feed.etag) == (2, False, '"v1"')


def test_http_errors_and_timeouts_are_recorded(store, server):
    feeds.add_feed(store, server.url)
    feeds.poll(store)
    server.status = 500
    r = feeds.poll(store)[0]
    assert "HTTP 500" in r.error and r.feed.entries == 3
    server.status, server.delay, server.etag = 200, 2.0, '"v9"'
    r = feeds.poll(store, timeout=0.3)[0]
    assert "timed out after 0.3s" in r.error
    assert len(store.memories("default")) == 3


def test_an_unreachable_url_is_recorded(store):
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    feeds.add_feed(store, f"http://127.0.0.1:{port}/feed")
    r = feeds.poll(store, timeout=2)[0]
    assert r.error.startswith("cannot fetch http://127.0.0.1:")
    assert r.feed.last_error == r.error and r.feed.last_ok_at is None


def test_due_feeds_follow_each_feeds_own_interval(tmp_path):
    from datetime import datetime, timedelta, timezone

    from memory import MemoryStore
    from memory.feeds import add_feed, due_feeds, poll

    rss = tmp_path / "a.xml"
    rss.write_text('<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
                   '<item><title>One headline here</title><guid>1</guid></item></channel></rss>')
    other = tmp_path / "b.xml"
    other.write_text(rss.read_text())
    with MemoryStore(tmp_path / "m.db") as store:
        fast = add_feed(store, str(rss), "alice", every_minutes=1)
        slow = add_feed(store, str(other), "alice")
        assert {f.id for f in due_feeds(store, 60)} == {fast.id, slow.id}  # never polled
        poll(store)
        now = datetime.now(timezone.utc)
        assert due_feeds(store, 60, now) == []
        assert [f.id for f in due_feeds(store, 60, now + timedelta(minutes=2))] == [fast.id]
        assert {f.id for f in due_feeds(store, 60, now + timedelta(minutes=61))} == {fast.id, slow.id}
        assert add_feed(store, str(other), "alice", every_minutes=5).every_minutes == 5
        with pytest.raises(Exception, match="> 0"):
            add_feed(store, str(other), "alice", every_minutes=0)


# -- feeds as a feed reader treats them ---------------------------------------------------------

EMPTY = '<?xml version="1.0"?><rss version="2.0"><channel><title>Quiet Desk</title></channel></rss>'


def test_a_feed_with_no_entries_yet_is_not_an_error(store, write):
    path = write("quiet.xml", EMPTY)
    feeds.add_feed(store, str(path))
    r = feeds.poll(store)[0]
    assert (r.error, r.new, r.feed.last_error, r.feed.title) == (None, 0, None, "Quiet Desk")
    assert r.feed.last_ok_at is not None
    path.write_text(rss([("a", "Alpha")]))  # the first story arrives
    assert feeds.poll(store)[0].new == 1


def test_feeds_poll_of_an_empty_feed_exits_0(tmp_path, write):
    from click.testing import CliRunner

    from agent.cli import cli

    home = ["--home", str(tmp_path / "home")]
    r = CliRunner().invoke(cli, ["feeds", "add", str(write("quiet.xml", EMPTY)), *home])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["feeds", "poll", *home])
    assert r.exit_code == 0 and "0 new" in r.output, r.output


def opml_doc(*outlines: str) -> str:
    return ('<?xml version="1.0"?><opml version="2.0"><head><title>mine</title></head><body>'
            + "".join(outlines) + "</body></opml>")


def test_opml_import_subscribes_reports_bad_entries_and_round_trips(store, write, tmp_path):
    from memory import FeedError, opml

    local = write("local.xml", rss([("a", "Alpha")]))
    doc = opml_doc('<outline text="Remote" xmlUrl="https://news.example/rss"/>',
                   f'<outline text="Folder"><outline text="Local" type="rss" xmlUrl="{local.as_uri()}"/></outline>',
                   '<outline text="Again" xmlUrl="https://news.example/rss"/>',
                   f'<outline text="Gone" xmlUrl="{(tmp_path / "gone.xml").as_uri()}"/>',
                   '<outline text="Gopher" xmlUrl="gopher://old.example/feed"/>')
    done = opml.import_opml(store, doc.encode(), tenant="alice")
    assert [f.source for f in done.added] == ["https://news.example/rss", str(local)]
    assert [s for s, _ in done.errors] == [(tmp_path / "gone.xml").as_uri(), "gopher://old.example/feed"]
    assert "not found" in done.errors[0][1] and "unsupported" in done.errors[1][1]
    again = opml.import_opml(store, doc.encode(), tenant="alice")
    assert (again.added, len(again.existing)) == ([], 2)  # idempotent

    exported = opml.export_opml(store, "alice")
    assert [s for s, _ in opml.parse_opml(exported.encode())] == ["https://news.example/rss", local.as_uri()]
    moved = opml.import_opml(store, exported.encode(), tenant="bob")  # the list moves to another tenant
    assert sorted(f.source for f in moved.added) == sorted(f.source for f in feeds.list_feeds(store, "alice"))
    assert opml.parse_opml(opml_doc().encode()) == []  # an empty list is a list

    before = feeds.list_feeds(store)
    for bad, why in [(opml_doc('<outline xmlUrl="https://x.example/rss"')[:-20], "malformed OPML"),
                     ("<html><body>not a list</body></html>", "not an OPML subscription list"),
                     ("", "malformed OPML")]:
        with pytest.raises(FeedError, match=why):
            opml.import_opml(store, bad.encode(), tenant="carol")
    assert feeds.list_feeds(store) == before  # nothing added by a bad file


def test_feeds_import_and_export_commands(tmp_path, write):
    from click.testing import CliRunner

    from agent.cli import cli

    home = ["--home", str(tmp_path / "home")]
    local = write("local.xml", rss([("a", "Alpha")]))
    subs = write("subs.opml", opml_doc(f'<outline text="Local" xmlUrl="{local.as_uri()}"/>'))
    r = CliRunner().invoke(cli, ["feeds", "import", str(subs), "--tenant", "alice", *home])
    assert r.exit_code == 0 and "1 added" in r.output, r.output
    out = tmp_path / "alice.opml"
    r = CliRunner().invoke(cli, ["feeds", "export", "--tenant", "alice", "-o", str(out), *home])
    assert r.exit_code == 0 and local.as_uri() in out.read_text(), r.output
    broken = write("broken.opml", opml_doc(f'<outline text="Gone" xmlUrl="{(tmp_path / "no.xml").as_uri()}"/>'))
    r = CliRunner().invoke(cli, ["feeds", "import", str(broken), *home])
    assert r.exit_code == 1 and "not added" in r.output and "feed file not found" in r.output
    r = CliRunner().invoke(cli, ["feeds", "import", str(tmp_path / "missing.opml"), *home])
    assert r.exit_code == 1 and "cannot read OPML file" in r.output


def test_one_huge_entry_does_not_fail_the_poll(store, write):
    huge = "Breaking " + "very " * 40_000 + "long headline."
    feeds.add_feed(store, str(write("huge.xml", rss([("h", huge), ("a", "Alpha")]))))
    r = feeds.poll(store)[0]
    assert (r.error, r.new) == (None, 2)
    texts = {m.text for m in store.memories("default")}
    assert "Alpha" in texts and any(t.startswith("Breaking very") and t.endswith("…") and len(t) <= 501
                                    for t in texts)
