"""`bakehouse remember`, `memories`, `forget`, `compose`, `feedback`, `episodes` and
`feeds add|poll|list|import|export`."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from memory import ADMISSIONS, DEFAULT_TENANT, KINDS, STATUSES, MemoryStore, MemoryStoreError
from memory import feeds as feedlib

from . import cli, domain_errors, home_option

tenant_option = click.option(
    "--tenant", "-t", default=DEFAULT_TENANT, show_default=True, help="Whose memories."
)


def _store(home) -> MemoryStore:
    return MemoryStore.in_home(home, actor="cli")


def _short(text: str, width: int = 72) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@cli.command()
@click.argument("text")
@tenant_option
@click.option("--kind", "-k", type=click.Choice(KINDS), default="fact", show_default=True)
@click.option("--source", default="cli", show_default=True, help="Where it came from.")
@click.option("--supersedes", type=int, metavar="ID", help="The memory this one replaces.")
@home_option
@domain_errors(MemoryStoreError)
def remember(text, tenant, kind, source, supersedes, home):
    """Store a memory for a tenant (it is baked at the next bake).

    Example usage:

        bakehouse remember "Always answer in French." --kind instruction
        bakehouse remember --tenant alice "Alice's cat is called Tofu." --supersedes 12
    """
    with _store(home) as store:
        if supersedes is not None:
            old = store.get(supersedes)
            if old.tenant != tenant:
                raise click.ClickException(f"memory {supersedes} is not a memory of tenant {tenant!r}")
            m = store.supersede(supersedes, text, kind=kind, source=source)
            click.echo(f"Remembered #{m.id} ({m.kind}, tenant {m.tenant!r}), superseding #{supersedes}")
            return
        m = store.add(tenant, kind, text, source=source)
    if m.created:
        click.echo(f"Remembered #{m.id} ({m.kind}, tenant {m.tenant!r})")
    else:
        click.echo(f"Already remembered as #{m.id} ({m.kind}, {m.status})")


@cli.command()
@tenant_option
@click.option("--status", "-s", type=click.Choice(STATUSES + ("all",)),
              help="Only this status. Default: pending and baked.")
@click.option("--kind", "-k", type=click.Choice(KINDS), multiple=True, help="Only these kinds.")
@click.option("--admission", "-a", type=click.Choice(ADMISSIONS), multiple=True,
              help="Only these admissions (proposed, quarantined: held out of prompts and bakes). Default: all.")
@click.option("--user", "-u", help="Only the tenant's own memories and this end user's. Default: everyone's.")
@click.option("--limit", type=int, help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Full records as JSON.")
@home_option
@domain_errors(MemoryStoreError)
def memories(tenant, status, kind, admission, user, limit, as_json, home):
    """List a tenant's memories, newest first (superseded, held back and end users' ones are marked).

    Example usage:

        bakehouse memories
        bakehouse memories --tenant alice --status forgotten --json
        bakehouse memories --tenant shop --admission quarantined
    """
    with _store(home) as store:
        rows = store.memories(tenant, status=STATUSES if status == "all" else status,
                              kind=kind or None, limit=limit, admission=admission or None, users=user or True)
        checks = {m.id: store.jobs.checks(m.id) for m in rows} if as_json else {}
    if as_json:  # with each verification of the memory: which bake, which questions, pass/fail
        click.echo(json.dumps(
            [{**{k: v for k, v in dataclasses.asdict(m).items() if k != "created"},
              "checks": [dataclasses.asdict(c) for c in checks[m.id]]} for m in rows],
            indent=2, ensure_ascii=False,
        ))
        return
    if not rows:
        click.echo(f"no memories for tenant {tenant!r}")
        return
    click.echo(f"{'id':>6}  {'kind':<15} {'status':<17} {'date':<10}  text")
    for m in rows:
        state = f"superseded>#{m.superseded_by}" if m.valid_to and m.status != "forgotten" else m.status
        state = state if m.admitted else m.admission
        scope = f" [user {m.end_user}]" if m.end_user else ""
        why = f"  ({m.admission_reason})" if not m.admitted and m.admission_reason else ""
        click.echo(f"{m.id:>6}  {m.kind:<15} {state:<17} {m.valid_from[:10]:<10}  {_short(m.text)}{scope}{why}")


@cli.command()
@click.argument("memory_id", type=int, metavar="ID", required=False)
@click.option("--user", "-u", help="Forget an end user instead: their memories and conversations, erased.")
@click.option("--tenant", "-t", default=DEFAULT_TENANT, show_default=True, help="The end user's tenant (with --user).")
@click.option("--reason", "-r", help="Kept in the audit log.")
@home_option
@domain_errors(MemoryStoreError)
def forget(memory_id, user, tenant, reason, home):
    """Forget a memory, or everything of one end user: it leaves every later prompt; adapters
    holding it are flagged for a rebake (the runtime rolls them back at once).

    \b
    Example usage:
        bakehouse forget 12 --reason "user asked"
        bakehouse forget --tenant shop --user u-42
    """
    if (memory_id is None) == (user is None):
        raise click.UsageError("name a memory ID or an end user (--user), one of them")
    with _store(home) as store:
        if user is not None:
            r = store.trust.forget_user(tenant, user)
            click.echo(f"Forgot end user {user!r} of {tenant!r}: {len(r.memories)} memories and "
                       f"{len(r.episodes)} conversations erased")
            versions = list(r.held_by)
            if not versions:
                click.echo("No published version holds any of them.")
        else:
            versions = store.forget(memory_id, reason=reason)
            click.echo(f"Forgot #{memory_id}")
    if versions:
        click.echo(f"Adapter versions holding {'them' if user else 'it'}, now needing a rebake: {', '.join(versions)}")


@cli.command()
@tenant_option
@click.option("--budget", "-b", type=int, default=2000, show_default=True,
              help="Token budget (approximate count: characters / 4).")
@click.option("--kind", "-k", type=click.Choice(KINDS), multiple=True, help="Only these kinds.")
@click.option("--pending-only", is_flag=True, help="Only memories not yet baked.")
@click.option("--json", "as_json", is_flag=True, help="Text, memory ids, tokens, left out, hash.")
@home_option
@domain_errors(MemoryStoreError)
def compose(tenant, budget, kind, pending_only, as_json, home):
    """Print the prompt a tenant's memories make (what a bake would bake).

    The text goes to stdout; a one-line summary (memories, tokens, left out) to stderr.

    Example usage:

        bakehouse compose --tenant alice --budget 500
    """
    with _store(home) as store:
        p = store.compose(tenant, kinds=kind or None, budget_tokens=budget, pending_only=pending_only)
    if as_json:
        click.echo(json.dumps({**dataclasses.asdict(p), "hash": p.hash}, indent=2, ensure_ascii=False))
        return
    if p.text:
        click.echo(p.text)
    left = f": {' '.join(f'#{i}' for i in p.left_out)}" if p.left_out else ""
    click.echo(
        f"[{len(p.memory_ids)} {'memory' if len(p.memory_ids) == 1 else 'memories'}, "
        f"~{p.tokens}/{budget} tokens, "
        f"{len(p.left_out)} left out{left}; sha256 {p.hash[:12]}]",
        err=True,
    )


@cli.command()
@click.argument("comment")
@tenant_option
@click.option("--rating", type=click.IntRange(-1, 1), help="-1 bad, 0, 1 good.")
@click.option("--conversation", "conversation_id", metavar="ID", help="The conversation it is about.")
@home_option
@domain_errors(MemoryStoreError)
def feedback(comment, tenant, rating, conversation_id, home):
    """Give feedback; a comment that states a rule becomes an instruction memory.

    Example usage:

        bakehouse feedback --tenant alice "From now on answer in one sentence."
    """
    from ..runtime.feedback import learn

    with _store(home) as store:
        m = learn(store, tenant, comment, rating, conversation_id, operator=True)
    if m is None:
        click.echo("No rule in that comment: nothing learned (a rule reads like 'Always answer in French').")
    elif not m.admitted:
        click.echo(f"Instruction #{m.id} {m.admission}: {m.admission_reason}")
    elif m.created:
        click.echo(f"Learned instruction #{m.id} for tenant {m.tenant!r}: {m.text}")
    else:
        click.echo(f"Already known as instruction #{m.id}: {m.text}")


@cli.command()
@click.option("--tenant", "-t", help="Only this tenant's episodes.")
@click.option("--json", "as_json", is_flag=True, help="Full records as JSON.")
@home_option
@domain_errors(MemoryStoreError)
def episodes(tenant, as_json, home):
    """List recorded conversations (episodes): status, messages, and the summary or why the last
    attempt at one failed.

    Example usage:

    \b
        bakehouse episodes
        bakehouse episodes --tenant alice --json
    """
    from ..runtime.episodes import episode_rows

    with _store(home) as store:
        rows = episode_rows(store, tenant)
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("no episodes (conversations through the gateway under `bakehouse run` are recorded)")
        return
    click.echo(f"{'id':>5}  {'tenant':<12} {'conversation':<20} {'status':<10} {'msgs':>4}  "
               f"{'started':<16}  {'updated':<16}  summary")
    for r in rows:
        if r["summary"] is not None:
            note = _short(r["summary"], 60)
        elif r["status"] == "skipped":  # the user stated nothing: a reason, not a failure
            note = _short(r["summary_error"], 60)
        elif r["summary_error"]:
            note = f"failed {r['summary_tries']}x: {_short(r['summary_error'], 50)}"
        else:
            note = "-"
        click.echo(f"{r['id']:>5}  {r['tenant']:<12} {_short(r['conversation_id'] or '-', 20):<20} "
                   f"{r['status']:<10} {r['messages']:>4}  {r['started_at'][:16].replace('T', ' '):<16}  "
                   f"{r['updated_at'][:16].replace('T', ' '):<16}  {note}")


@cli.group()
def feeds():
    """RSS/Atom feeds whose entries become dated-news memories."""


@feeds.command("add")
@click.argument("source", metavar="URL_OR_PATH")
@tenant_option
@click.option("--every", "every_minutes", type=float, metavar="MINUTES",
              help="Poll this feed every MINUTES under `bakehouse run` (default: its --feed-minutes).")
@home_option
@domain_errors(MemoryStoreError)
def feeds_add(source, tenant, every_minutes, home):
    """Register a feed for a tenant (fetched by `feeds poll`, or by `bakehouse run` on its interval).

    Example usage:

        bakehouse feeds add https://example.org/news.rss
        bakehouse feeds add ./news.atom --tenant alice --every 5
    """
    with _store(home) as store:
        f = feedlib.add_feed(store, source, tenant, every_minutes=every_minutes)
    verb = "Added feed" if f.created else "Feed already added"
    click.echo(f"{verb} #{f.id} for tenant {f.tenant!r}: {f.source}")


@feeds.command("poll")
@click.option("--tenant", "-t", help="Only this tenant's feeds.")
@click.option("--feed", "feed_id", type=int, metavar="ID", help="Only this feed.")
@click.option("--max-new", type=int, default=feedlib.MAX_NEW_PER_POLL, show_default=True,
              help="Cap on new headlines per feed per poll.")
@click.option("--timeout", type=float, default=feedlib.TIMEOUT_S, show_default=True,
              help="Seconds per HTTP fetch.")
@home_option
@domain_errors(MemoryStoreError)
def feeds_poll(tenant, feed_id, max_new, timeout, home):
    """Fetch every feed and store its new entries (exit code 1 if any feed failed).

    Example usage:

        bakehouse feeds poll
        bakehouse feeds poll --tenant alice --max-new 50
    """
    with _store(home) as store:
        results = feedlib.poll(store, tenant=tenant, feed_id=feed_id, timeout=timeout, max_new=max_new)
    if not results:
        click.echo("no feeds (bakehouse feeds add URL_OR_PATH)")
        return
    for r in results:
        if r.error:
            outcome = f"error: {r.error}"
        elif r.not_modified:
            outcome = "not modified"
        else:
            outcome = f"{r.new} new, {r.seen} already stored" + (", more next poll" if r.more else "")
        click.echo(f"#{r.feed.id} [{r.feed.tenant}] {r.feed.source}: {outcome}")
    failed = sum(1 for r in results if r.error)
    if failed:
        raise click.ClickException(f"{failed} of {len(results)} feeds failed")


@feeds.command("import")
@click.argument("opml_file", type=click.Path(dir_okay=False))
@tenant_option
@home_option
@domain_errors(MemoryStoreError)
def feeds_import(opml_file, tenant, home):
    """Subscribe a tenant to every feed of an OPML subscription list (as feed readers export it).

    Example usage:

        bakehouse feeds import subscriptions.opml --tenant alice
    """
    from memory import opml

    data = opml.read_opml(opml_file)
    with _store(home) as store:
        done = opml.import_opml(store, data, tenant)
    for f in done.added:
        click.echo(f"Added feed #{f.id} for tenant {f.tenant!r}: {f.source}")
    click.echo(f"{len(done.added)} added, {len(done.existing)} already added, {len(done.errors)} not added")
    for source, why in done.errors:
        click.echo(f"not added: {source}: {why}", err=True)
    if done.errors:
        raise click.ClickException(f"{len(done.errors)} feeds of {opml_file} were not added")


@feeds.command("export")
@tenant_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here (default: standard output).")
@home_option
@domain_errors(MemoryStoreError)
def feeds_export(tenant, output, home):
    """A tenant's feeds as an OPML subscription list.

    Example usage:

        bakehouse feeds export --tenant alice -o alice.opml
    """
    from memory import opml

    with _store(home) as store:
        text = opml.export_opml(store, tenant)
    if output:
        try:
            tmp = Path(output).with_name(f".{Path(output).name}.tmp")
            tmp.write_text(text)
            tmp.replace(output)
        except OSError as e:
            raise click.ClickException(f"cannot write {output}: {e.strerror or e}") from e
    else:
        click.echo(text, nl=False)


@feeds.command("list")
@click.option("--tenant", "-t", help="Only this tenant's feeds.")
@click.option("--json", "as_json", is_flag=True)
@home_option
@domain_errors(MemoryStoreError)
def feeds_list(tenant, as_json, home):
    """List feeds with their last poll and last error.

    Example usage:

        bakehouse feeds list
    """
    with _store(home) as store:
        rows = feedlib.list_feeds(store, tenant)
    if as_json:
        click.echo(json.dumps(
            [{k: v for k, v in dataclasses.asdict(f).items() if k != "created"} for f in rows],
            indent=2, ensure_ascii=False,
        ))
        return
    if not rows:
        click.echo("no feeds (bakehouse feeds add URL_OR_PATH)")
        return
    click.echo(f"{'id':>4}  {'tenant':<12} {'entries':>7}  {'last ok':<19}  source")
    for f in rows:
        ok = (f.last_ok_at or "never")[:19].replace("T", " ")
        click.echo(f"{f.id:>4}  {f.tenant:<12} {f.entries:>7}  {ok:<19}  {f.source}")
        if f.last_error:
            click.echo(f"{'':>6}last error: {f.last_error}")
