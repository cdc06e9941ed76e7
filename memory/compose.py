"""Turning a tenant's memories into the prompt that gets baked (or sent), within a token budget.

Layout: one plain header per kind, in the fixed order of SECTIONS, newest memory first:

    Persona:
    - You are Ada, the ship's cook.

    Quoted from news feeds:
    - 2026-11-03: "The Quillon Institute unveils a battery made from seaweed, called the Kelpcell."

Feed items are untrusted text: they are quoted under a header that says where they came from, so
the model reads them as data, not as the operator's words (memory.screen quarantines the ones that
read as orders before they get here).

The same memories always give the same text (and so the same hash). The budget is spent in
SECTIONS order; inside a kind, once a memory does not fit, it and every older one of that kind
are left out (a prompt never skips a newer memory to keep an older one). Everything left out is
reported in `Prompt.left_out`.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

from .errors import InvalidInput

# kind -> header, in prompt order, which is also the order the budget is spent in.
SECTIONS = {
    "persona": "Persona",
    "instruction": "Instructions from the user",
    "fact": "Facts",
    "headline": "Quoted from news feeds",
    "episode_summary": "What happened in past conversations",
}
DATED = {"headline", "episode_summary"}  # items shown with their date
QUOTED = {"headline"}  # items shown in quotes: someone else's words


def approx_tokens(text: str) -> int:
    """Default token counter: ~4 characters per token (English, BPE tokenizers), rounded up.
    Callers with the real tokenizer pass `count_tokens=lambda s: len(tok.encode(s))`."""
    return math.ceil(len(text) / 4)


class Item(NamedTuple):
    id: int
    kind: str
    text: str
    valid_from: str  # ISO 8601; newest first


@dataclass(frozen=True)
class Prompt:
    text: str
    memory_ids: tuple[int, ...]  # in the order they appear in the text
    tokens: int  # count_tokens(text)
    left_out: tuple[int, ...]  # valid memories that did not fit the budget

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def render(
    items: Sequence[Item],
    *,
    kinds: Sequence[str] | None = None,
    budget_tokens: int = 2000,
    count_tokens: Callable[[str], int] | None = None,
) -> Prompt:
    """Lay out `items` (already one tenant's valid memories, newest first within each kind)."""
    if budget_tokens < 0:
        raise InvalidInput(f"token budget must be >= 0, got {budget_tokens}")
    count = count_tokens or approx_tokens
    wanted = [k for k in SECTIONS if kinds is None or k in kinds]
    by_kind: dict[str, list[Item]] = {k: [] for k in wanted}
    for it in items:
        if it.kind in by_kind:
            by_kind[it.kind].append(it)

    # Greedy fill, section by section; piece costs are summed (cheap), the final text is
    # counted once more below in case the tokenizer does not add up across pieces.
    chosen: dict[str, list[Item]] = {k: [] for k in wanted}
    left_out: list[int] = []
    used = 0
    for kind in wanted:
        header_cost = count(("\n" if used else "") + SECTIONS[kind] + ":\n")
        for n, it in enumerate(by_kind[kind]):
            cost = count(_line(it) + "\n") + (0 if chosen[kind] else header_cost)
            if used + cost > budget_tokens:
                left_out.extend(i.id for i in by_kind[kind][n:])
                break
            chosen[kind].append(it)
            used += cost

    text = _fit(chosen, wanted, left_out, budget_tokens, count)
    return Prompt(
        text=text,
        memory_ids=tuple(it.id for k in wanted for it in chosen[k]),
        tokens=count(text),
        left_out=tuple(left_out),
    )


def select(
    pinned: Sequence[Item],
    ranked: Sequence[Item],
    *,
    top_k: int,
    budget_tokens: int,
    pinned_tokens: float | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> Prompt:
    """A request's prompt (memory.retrieval): `pinned` in order while they fit `pinned_tokens`
    (default: the whole budget), then up to `top_k` of `ranked` (best first) not placed yet, each
    that fits the budget. Laid out by SECTIONS; inside a section in the order given."""
    if budget_tokens < 0 or top_k < 0:
        raise InvalidInput(f"token budget and top-k must be >= 0, got {budget_tokens}, {top_k}")
    count = count_tokens or approx_tokens
    chosen: dict[str, list[Item]] = {k: [] for k in SECTIONS}
    placed: set[int] = set()
    left_out: list[int] = []
    used = 0

    def place(it: Item, limit: float) -> bool:
        nonlocal used
        header = 0 if chosen[it.kind] else count(("\n" if used else "") + SECTIONS[it.kind] + ":\n")
        cost = count(_line(it) + "\n") + header
        if used + cost > limit:
            return False
        chosen[it.kind].append(it)
        placed.add(it.id)
        used += cost
        return True

    for it in pinned:
        if it.kind in chosen and not place(it, budget_tokens if pinned_tokens is None else pinned_tokens):
            left_out.append(it.id)
    taken = 0
    for it in ranked:
        if taken >= top_k:
            break
        if it.id in placed or it.kind not in chosen:
            continue
        if place(it, budget_tokens):
            taken += 1
        else:
            left_out.append(it.id)
    text = _fit(chosen, list(SECTIONS), left_out, budget_tokens, count)
    ids = tuple(it.id for k in SECTIONS for it in chosen[k])
    return Prompt(text=text, memory_ids=ids, tokens=count(text),
                  left_out=tuple(dict.fromkeys(i for i in left_out if i not in ids)))


def _fit(chosen: dict[str, list[Item]], order: list[str], left_out: list[int], budget_tokens: int,
         count: Callable[[str], int]) -> str:
    """The layout of `chosen`, dropping the last memory placed (into `left_out`) until the whole
    text fits: the pieces' costs are summed, and a tokenizer need not add up across pieces."""
    text = _layout(chosen)
    while count(text) > budget_tokens:
        last_kind = [k for k in order if chosen[k]][-1]
        left_out.append(chosen[last_kind].pop().id)
        text = _layout(chosen)
    return text


def _line(it: Item) -> str:
    body = "\n  ".join(it.text.splitlines())
    if it.kind in QUOTED:
        body = '"' + body.replace('"', "'") + '"'
    return f"- {it.valid_from[:10]}: {body}" if it.kind in DATED else f"- {body}"


def _layout(chosen: dict[str, list[Item]]) -> str:
    return "\n\n".join(
        SECTIONS[kind] + ":\n" + "\n".join(_line(it) for it in its)
        for kind, its in chosen.items()
        if its
    )
