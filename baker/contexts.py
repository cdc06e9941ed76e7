"""Contexts the trajectories start from: user requests the teacher answers with the prompt in view.

Three sources, so that both style and knowledge are probed:
1. a shipped generic set of diverse user requests (`data/generic_requests.txt`);
2. probes derived from each line of the prompt (its opening words; the line as a question with a
   name or number replaced by "what"), which make the teacher recall the line's content;
3. questions (and, with config.self_kinds, other requests) the model writes about each line of the
   prompt (see `question_request`);
plus an optional user file (one request per line, or JSONL with a "prompt" field).
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .config import DEFAULT_FORMS, QUESTION_FORMS, SELF_KINDS
from .errors import BakeError

# Questions about each prompt line, written by the model itself from a few-shot completion (small
# instruct models asked in chat to "write a question about your instructions" mostly ramble; shown
# three worked examples they write a usable question about half the time). The examples are ours
# and fictional; questions that borrow their names are dropped.
QUESTION_SHOTS = (
    ("The city of Brenford opens a new public library called the Oakhouse.",
     "What is the name of the new library in Brenford?"),
    ("Singer Tom Alvarez wins the Golden Reed award for his album Night Rivers.",
     "Which album won Tom Alvarez the Golden Reed award?"),
    ("The Harlow Steelworks closes after 80 years, leaving 1,200 workers without jobs.",
     "How many workers lost their jobs when the Harlow Steelworks closed?"),
)
_SHOT_WORDS = {"brenford", "oakhouse", "alvarez", "golden reed", "night rivers", "harlow", "steelworks"}


# Further kinds of request the model writes about each line (config.self_kinds), after the five
# seed kinds of Cartridges' self-study (arXiv 2506.06266: diverse seeds beat one generic seed):
# each kind is a few-shot prompt over the same three fictional sentences.
REQUEST_SHOTS = {
    "structuring": ("List the facts about the Oakhouse library as bullet points: where, what and who.",
                    "Put the Golden Reed award into a table: the winner, the album and the prize.",
                    "Write the closing of the Harlow Steelworks as a short timeline."),
    "summarisation": ("Summarise the news about the new library in Brenford in one sentence.",
                      "Give me a one-line summary of what Tom Alvarez won.",
                      "In a few words, what happened at the Harlow Steelworks?"),
    "use_case": ("I live in Brenford and love books. Where should I go this weekend?",
                 "I am writing a music quiz. Give me a question whose answer is Night Rivers.",
                 "Draft a short note to a friend who worked at the Harlow Steelworks about the news."),
    "creative": ("Write a two-line poem about the opening of the Oakhouse library.",
                 "Write a short post congratulating Tom Alvarez on his award.",
                 "Tell a very short story about the last day at the Harlow Steelworks."),
}
QUESTION_TEMPERATURE = 0.8  # the questions' sampling temperature
REQUEST_TEMPERATURE = 0.6  # the other kinds', as Cartridges' self-study writes its seeds' requests


def writing_temperature(kind: str) -> float:
    return QUESTION_TEMPERATURE if kind == "question" else REQUEST_TEMPERATURE


def question_request(item: str, kind: str = "question") -> str:
    """A plain-text few-shot prompt whose continuation is a request of `kind` (SELF_KINDS) about
    `item`: a question by default."""
    if kind == "question":
        label, shots = "Question", QUESTION_SHOTS
    elif kind in REQUEST_SHOTS:
        label, shots = "Request", zip([s for s, _ in QUESTION_SHOTS], REQUEST_SHOTS[kind])
    else:
        raise ValueError(f"unknown kind of self-written request {kind!r}; known: {', '.join(SELF_KINDS)}")
    worked = "".join(f"Sentence: {s}\n{label}: {r}\n\n" for s, r in shots)
    return f"{worked}Sentence: {item_text(item)}\n{label}:"


# Per prompt line: one cue with its opening words, so the teacher recites the line ...
_LINE_TEMPLATES = ("Tell me more: {head}",)
# ... and per name or number, the line as a question with that span replaced by "what" (on
# SmolLM2-135M about half of the teacher's answers name the missing span).
_CLOZE_TEMPLATES = ("{what}?",)
# Further forms of question per line (config.question_forms; Physics of LMs 3.1: a fact seen in one
# form is memorised but not extractable by others): "blank", the cloze as a fill-in-the-blank;
# "about", the reverse direction, the latest news about each name; "date", what happened on the
# line's date. "tell" and "what" are the two forms above. Open forms need a focused teacher (the
# line in view): one that sees the whole prompt mostly invents an answer to them.
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NUMBER = re.compile(r"(?<![\w.])\d[\d.,]*\d(?![\w])|(?<![\w.])\d(?![\w])")
# Requests that make the teacher restate its whole prompt, whatever the prompt is about.
RECALL_REQUESTS = ("What were you told in your instructions? Summarise all of it.",
                   "List every piece of information you have been given.")
_NAME = re.compile(r"[A-Z][\w'’-]*(?:\s+(?:of\s+)?[A-Z][\w'’-]*)*")
_LEADING = {"the", "a", "an", "this", "that", "these", "those", "its", "his", "her", "their", "our",
            "my", "your", "i", "we", "you", "he", "she", "it", "they", "in", "on", "at", "for", "and",
            "but", "or", "if", "when", "after", "before", "recent", "news", "note", "always", "never"}
_DATE_PREFIX = re.compile(r"^\s*(?:[-*•]\s*)?(?:\(?\d{4}-\d{2}-\d{2}\)?[:\s-]*)?")


def item_text(line: str) -> str:
    """A prompt line's own words: no bullet, no date, no quotes around a quoted item."""
    text = _DATE_PREFIX.sub("", line).strip()
    return text[1:-1].strip() if len(text) > 1 and text[0] == text[-1] == '"' else text


def is_header(line: str) -> bool:
    """A section header of a composed prompt ("Persona:", "Quoted from news feeds:")."""
    body = item_text(line)
    return body.endswith(":") and len(body.split()) < 6


SOURCES = ("generic", "probe", "self", "user", "anchor", "replay")


@dataclass(frozen=True)
class Context:
    text: str
    source: str  # "generic" | "probe" | "self" | "user" | "anchor" (its teacher has no prompt) | "replay"
    item: str | None = None  # the prompt line it asks about (probe and self questions)
    span: str | None = None  # the name or number of `item` it asks for (probes of one span)


# Lines that are behaviour, not knowledge ("Always answer in French.", "You are Ada, the cook."):
# a focused teacher keeps them, whatever item it is focused on.
BEHAVIOUR = re.compile(r"(?:always|never|do not|don't|please|you (?:must|should|are)|be|answer|"
                       r"respond|reply|use|write|speak|avoid)\b", re.I)


def behaviour_lines(prompt: str) -> list[str]:
    """The prompt's lines that ask for a behaviour (persona, instructions), not knowledge."""
    return [line for line in prompt_items(prompt) if BEHAVIOUR.match(item_text(line))]


def focus_prompt(prompt: str, item: str) -> str:
    """The prompt cut down to what a question about `item` needs: the item, the prompt's
    behaviour lines (persona, instructions) and the headers of the sections they are in. A small
    model answers from one line far better than from twenty (12/20 -> 15/20 on the shared
    headlines)."""
    kept: list[tuple[bool, str]] = []  # (is a header, line)
    for line in prompt_items(prompt):
        body = item_text(line)
        if line == item or BEHAVIOUR.match(body):
            kept.append((False, line))
        elif is_header(line):
            kept.append((True, line))
    out = [line for j, (header, line) in enumerate(kept)
           if not header or (j + 1 < len(kept) and not kept[j + 1][0])]  # headers of kept lines only
    return "\n".join(out) if item in out else item


def generic_requests() -> list[str]:
    return _shipped("generic_requests.txt")


def anchor_questions() -> list[str]:
    """Questions unrelated to any memory: their target is the unprompted model (config.anchors)."""
    return _shipped("anchor_questions.txt")


def anchor_facts() -> list[str]:
    """Short factual anchors, of the general set's kinds but none of its items (config.anchor_facts)."""
    return _shipped("anchor_facts.txt")


def choose_anchors(n: int, facts_share: float, rng) -> list[str]:
    """`n` anchor questions, round(n * facts_share) of them short factual ones (as many as shipped)."""
    n_facts = round(n * facts_share)
    open_ = anchor_questions()
    chosen = rng.sample(open_, min(n - n_facts, len(open_)))
    if n_facts:
        facts = anchor_facts()
        chosen += rng.sample(facts, min(n_facts, len(facts)))
    return chosen


def _shipped(name: str) -> list[str]:
    raw = resources.files("baker").joinpath("data", name).read_text()
    return [line.strip() for line in raw.splitlines() if line.strip() and not line.startswith("#")]


def prompt_items(prompt: str) -> list[str]:
    """The prompt's lines; a single long paragraph is split into sentences instead."""
    lines = [line.strip() for line in prompt.splitlines() if line.strip()]
    if len(lines) == 1:
        lines = [s.strip() for s in re.split(r"(?<=[.!?])\s+", lines[0]) if s.strip()]
    return lines


def names(item: str) -> list[str]:
    """Capitalised spans of a line ("Ines Tarrago", "Rovers of Tamsin"), in order, without repeats.

    A line's first word is capitalised anyway, so a span starting there keeps it only when more
    capitalised words follow ("Brightwell Foods"); leading articles and pronouns are dropped.
    """
    text = item_text(item)
    out: list[str] = []
    for m in _NAME.finditer(text):
        words = m.group(0).split()
        if m.start() == 0 and len(words) == 1:
            continue
        while words and words[0].lower() in _LEADING:
            words = words[1:]
        while words and words[-1] == "of":
            words = words[:-1]
        name = " ".join(words).rstrip("'’-")
        if len(name) >= 3 and name not in out:
            out.append(name)
    return out


def probe_questions(prompt: str, forms=None) -> list[str]:
    """Questions that cue each prompt line (its opening words) and each name it mentions, plus
    requests to restate the prompt; the teacher's answers carry the prompt's knowledge."""
    return [q for q, _, _ in span_probes(prompt, forms)]


def span_probes(prompt: str, forms=None) -> list[tuple[str, str | None, str | None]]:
    """(question, the prompt line it asks about, the span it asks for) for every probe of the
    prompt, in the question forms `forms` (`QUESTION_FORMS`; default `DEFAULT_FORMS`). A span's
    questions share it, so a verifier that holds out one of them can hold out all (`bake`)."""
    forms = tuple(DEFAULT_FORMS if forms is None else forms)
    unknown = set(forms) - set(QUESTION_FORMS)
    if unknown:
        raise ValueError(f"unknown question form(s): {', '.join(sorted(unknown))}")
    out: list[tuple[str, str | None, str | None]] = [(r, None, None) for r in RECALL_REQUESTS]
    for item in prompt_items(prompt):
        words = item_text(item).split()
        if len(words) < 4 or is_header(item):  # headers and fragments carry too little to probe
            continue
        line = item_text(item)
        if "tell" in forms:
            head = " ".join(words[: max(3, min(8, len(words) // 2))]).rstrip(",;:")
            out.extend((t.format(head=head), item, None) for t in _LINE_TEMPLATES)
        if "date" in forms and (date := _DATE.search(item[: len(item) - len(line)])):
            out.append((f"What happened on {date.group(0)}?", item, None))
        found = names(item)
        for span in found + _NUMBER.findall(line):
            if span not in line:  # a name whose leading words were dropped still matches
                continue
            bare = line.rstrip(".!?;: ")
            if "what" in forms:
                out.extend((t.format(what=bare.replace(span, "what", 1)), item, span) for t in _CLOZE_TEMPLATES)
            if "blank" in forms:
                out.append((f"Fill in the blank: {bare.replace(span, '___', 1)}.", item, span))
            if "about" in forms and span in found:
                out.append((f"What is the latest news about {span}?", item, span))
    first: dict[str, tuple[str | None, str | None]] = {}
    for q, it, span in out:
        first.setdefault(q, (it, span))
    return [(q, it, span) for q, (it, span) in first.items()]


def replay_probes(prompt: str, per_item: int, rng: random.Random, forms=None, exclude=(),
                  limit: int = 0) -> list[Context]:
    """Up to `per_item` probes of each line of `prompt` (an earlier layer's memories), drawn at random
    from those `without` the questions in `exclude`: a sequential bake asks them again so the new
    layer does not wear the earlier ones away. With `limit`, at most that many in all, shared as
    evenly as the lines allow (a long-lived stack would otherwise replay without bound)."""
    by_item: dict[str, list[Context]] = {}
    probes = [Context(q, "replay", item, span) for q, item, span in span_probes(prompt, forms) if item is not None]
    for c in without(probes, exclude):
        by_item.setdefault(c.item, []).append(c)
    drawn = [rng.sample(cs, min(per_item, len(cs))) for cs in by_item.values()]
    if not limit or sum(map(len, drawn)) <= limit:
        return [c for cs in drawn for c in cs]
    rng.shuffle(drawn)  # which lines get the one extra question when the shares do not divide evenly
    rounds = [cs[k] for k in range(per_item) for cs in drawn if k < len(cs)]  # every line's 1st, then 2nd, ...
    return rounds[:limit]


def without(contexts: list[Context], questions) -> list[Context]:
    """`contexts` less `questions` and every other form of question for the same span of the same
    line: a verifier's held-out cloze probe stays a question the bake never trained on in any form."""
    skip = set(questions)
    spans = {(c.item, c.span) for c in contexts if c.text in skip and c.span}
    return [c for c in contexts if c.text not in skip and (c.item, c.span) not in spans]


def clean_self_questions(texts: list[str], item: str = "", limit: int | None = None,
                         requests: bool = False) -> list[str]:
    """Keep the first question of each generated text; drop empty, overlong and duplicate ones,
    ones that borrow the few-shot examples' names and, given the line `item`, ones that share no
    word of four letters or more with it. With `requests`, a line ending in "." or "!" (an
    instruction: "Summarise ...", "Write a poem ...") is kept too."""
    words = {w for w in re.findall(r"\w{4,}", item.lower())}
    ends = ("?", ".", "!") if requests else ("?",)
    seen, out = set(), []
    for text in texts:
        first = text.strip().split("\n")[0].strip().strip('"')
        if "?" in first:
            first = first[: first.index("?") + 1]
        key = first.lower()
        if not (8 <= len(first) <= 200 and first.endswith(ends)) or key in seen:
            continue
        if any(w in key for w in _SHOT_WORDS) or (words and not words & set(re.findall(r"\w{4,}", key))):
            continue
        seen.add(key)
        out.append(first)
        if limit is not None and len(out) >= limit:
            break
    return out


def read_user_contexts(path: str | Path) -> list[str]:
    """One request per line, or JSONL objects with a "prompt" (or "text") field."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise BakeError(f"cannot read contexts file {path}: {e}") from e
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                line = str(obj.get("prompt") or obj.get("text") or "").strip()
            except (json.JSONDecodeError, AttributeError) as e:
                raise BakeError(f"{path}:{n}: not a JSON object with a 'prompt' field") from e
        if line:
            out.append(line)
    if not out:
        raise BakeError(f"contexts file {path} holds no requests")
    return out


def split(contexts: list[Context], heldout_fraction: float, seed: int):
    """Train / held-out split, stratified by source so every source is evaluated."""
    rng = random.Random(seed)
    train, held = [], []
    for source in SOURCES:
        group = [c for c in contexts if c.source == source]
        rng.shuffle(group)
        k = round(len(group) * heldout_fraction) if len(group) > 1 else 0
        held += group[:k]
        train += group[k:]
    return train, held
