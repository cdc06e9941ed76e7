"""`bakehouse tenants policy` and `bakehouse instructions list|approve|reject`: what a tenant learns
from its users, and the operator's review of it (memory.trust)."""
from __future__ import annotations

import click

from memory import DEFAULT_TENANT, PRESETS, MemoryStore, MemoryStoreError
from memory.trust import LEARN_EPISODES, LEARN_INSTRUCTIONS

from . import cli, domain_errors, home_option
from .serve import tenants


def _store(home) -> MemoryStore:
    return MemoryStore.in_home(home, actor="cli")


@tenants.command("policy")
@click.argument("name")
@click.option("--preset", type=click.Choice(sorted(PRESETS)),
              help="shared: a persona many end users share (review, user); assistant: one user's own (auto, tenant).")
@click.option("--learn-instructions", type=click.Choice(LEARN_INSTRUCTIONS),
              help="A rule from feedback: review (the operator approves it), auto (at once), off.")
@click.option("--learn-episodes", type=click.Choice(LEARN_EPISODES),
              help="Conversation summaries: user (that end user's hot tier only, never baked), tenant, off.")
@home_option
@domain_errors(MemoryStoreError)
def tenants_policy(name, preset, learn_instructions, learn_episodes, home):
    """Show or set what a tenant learns from its users (default: the shared preset).

    \b
    Example usage:
        bakehouse tenants policy alice
        bakehouse tenants policy alice --preset assistant
        bakehouse tenants policy shop --learn-instructions off
    """
    with _store(home) as store:
        if preset or learn_instructions or learn_episodes:
            p = store.trust.set_policy(name, preset, learn_instructions=learn_instructions,
                                       learn_episodes=learn_episodes)
        else:
            p = store.trust.policy(name)
    click.echo(f"tenant {name}: learn_instructions={p.learn_instructions} learn_episodes={p.learn_episodes}")


@cli.group()
def instructions():
    """Rules learned from feedback that wait for the operator (policy learn_instructions=review),
    and anything quarantined."""


@instructions.command("list")
@click.option("--tenant", "-t", default=DEFAULT_TENANT, show_default=True)
@click.option("--all", "everything", is_flag=True, help="Quarantined memories of every kind too.")
@home_option
@domain_errors(MemoryStoreError)
def instructions_list(tenant, everything, home):
    """List proposals (and, with --all, quarantined memories) with their reason.

    \b
    Example usage:
        bakehouse instructions list --tenant shop
    """
    with _store(home) as store:
        rows = store.trust.held_back(tenant)
    rows = [m for m in rows if everything or m.kind == "instruction"]
    if not rows:
        click.echo(f"nothing waits for review in {tenant!r}")
    for m in rows:
        scope = f" [user {m.end_user}]" if m.end_user else ""
        click.echo(f"{m.id:>6}  {m.admission:<11}  {m.text}{scope}  ({m.admission_reason})")


@instructions.command("approve")
@click.argument("memory_id", type=int, metavar="ID")
@click.option("--user-only", is_flag=True, help="Only for the end user it came from, not the whole tenant.")
@home_option
@domain_errors(MemoryStoreError)
def instructions_approve(memory_id, user_only, home):
    """Admit a proposal (or a quarantined memory): hot at once, then baked like any memory.

    \b
    Example usage:
        bakehouse instructions approve 17
    """
    from ..runtime.feedback import approve

    with _store(home) as store:
        m = approve(store, memory_id, tenant_wide=not user_only)
    scope = f"end user {m.end_user}" if m.end_user else "every user"
    click.echo(f"Approved #{m.id} for {scope} of {m.tenant!r}: {m.text}")


@instructions.command("reject")
@click.argument("memory_id", type=int, metavar="ID")
@click.option("--reason", "-r", help="Kept with it and in the audit log.")
@home_option
@domain_errors(MemoryStoreError)
def instructions_reject(memory_id, reason, home):
    """Refuse a proposal (or a quarantined memory); it stays, marked rejected.

    \b
    Example usage:
        bakehouse instructions reject 17 --reason "not for everyone"
    """
    with _store(home) as store:
        m = store.trust.reject(memory_id, reason)
    click.echo(f"Rejected #{m.id}: {m.text}")
