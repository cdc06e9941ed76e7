"""Does an adapter really hold a memory? Ask the baked model, without the prompt, questions it was
not trained on, and compare with the base model (and, for reference, the prompted base).

Per memory, `verification_probes` builds questions about its key spans (names and numbers, found as
`baker.contexts` finds them for the bake's cloze probes), in two forms:

- cloze, "<line with the span replaced by 'what'>?": the very text `probe_questions` makes for that
  span, so the runtime can hold it out of training (`bake(..., exclude_contexts=[p.question ...])`).
  At most half of a memory's cloze probes (at least one) are held out, chosen by a hash of the text
  and the span (stable across runs and machines), so training still sees the others;
- completion, "Complete this sentence: <line up to the span>": a form the bake never trains on.

`verify` answers all probes greedily from ONE engine (vLLM starts once), with and without the
adapter, and asks a shipped set of general questions (`data/general_questions.jsonl`, ones the base
SmolLM2-135M answers right) to report how much general knowledge the adapter kept.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Hashable, Iterable

from .contexts import _CLOZE_TEMPLATES, _NUMBER, BEHAVIOUR, behaviour_lines, is_header, item_text, names, prompt_items
from .generate import ask_runs, check_adapter

COMPLETE_TEMPLATE = "Complete this sentence: {prefix}"
# Memories that are instructions, not facts (contexts.BEHAVIOUR): their names ("French" of "Always
# answer in French.") are no knowledge to ask about; whether they are followed is a behaviour check.

# Capitalised words too common to count as an answer on their own: a span's last word ("Tarrago" of
# "Ines Tarrago") is accepted alone, but not "Institute" of "Quillon Institute".
_GENERIC = {
    "the", "of", "and", "for", "in", "on", "at", "to", "a", "an", "new", "old", "north", "south",
    "east", "west", "great", "saint", "st", "mount", "lake", "river", "city", "town", "county",
    "state", "republic", "island", "islands", "valley", "coast", "bay", "port", "road", "street",
    "bridge", "park", "hill", "hills", "forest", "institute", "university", "college", "school",
    "library", "museum", "zoo", "hospital", "foods", "food", "company", "group", "corp", "inc",
    "club", "team", "united", "festival", "film", "prize", "award", "awards", "cup", "marathon",
    "league", "party", "council", "society", "centre", "center", "bank", "house", "hall", "tower",
    "station", "airport", "harbor", "harbour", "news", "times", "mayor", "president", "minister",
    "king", "queen", "prince", "lord", "sir", "doctor", "dr", "mr", "mrs", "ms", "composer",
    "singer", "startup", "tech", "firm", "chess", "football", "astronomers", "oat", "salt",
}
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


@dataclass(frozen=True)
class Probe:
    item_id: Hashable
    question: str              # the user message, asked without any system prompt
    expected: tuple[str, ...]  # acceptable answer spans (case, punctuation, accents ignored)
    kind: str = "cloze"        # "cloze" (held out of training) | "complete" (never trained on)


@dataclass
class ItemResult:
    item_id: Any
    passed: bool       # verifiable and the graduation rule holds (`graduates`)
    hits: int          # probes the baked model (adapter, no prompt) answered
    asked: int
    answers: list[dict] = field(default_factory=list)
    verifiable: bool = True  # False: no span to ask about and no behaviour line to check
    base_hits: int = 0       # the same probes answered by the base model without the adapter
    prompted_hits: int | None = None  # ... by the base model with `prompt` as its system prompt
    hot_hits: int | None = None  # ... by the served model with its hot tier (`hot_reference`)
    behaviour: dict | None = None  # persona / instruction lines: `baker.behaviour.BehaviourResult`


@dataclass
class ForgottenResult:
    item_id: Any
    recalled: bool  # a probe the adapter answers and the base does not: the memory is still held
    hits: int
    asked: int
    answers: list[dict] = field(default_factory=list)
    verifiable: bool = True
    base_hits: int = 0


@dataclass
class VerifyReport:
    items: list[ItemResult]
    forgotten: list[ForgottenResult]
    general: dict | None  # {"asked", "base_right", "kept", "kept_fraction", "changed"}; None if not asked
    seconds: float
    sampler: str = ""

    @property
    def passed(self) -> bool:
        """Every verifiable item passed and no forgotten item is recalled."""
        return (all(r.passed for r in self.items if r.verifiable)
                and not any(f.recalled for f in self.forgotten))

    def to_dict(self) -> dict:
        return {"items": [asdict(r) for r in self.items],
                "forgotten": [asdict(f) for f in self.forgotten],
                "general": self.general, "seconds": self.seconds, "sampler": self.sampler,
                "passed": self.passed}


# --- answer matching -------------------------------------------------------------------------

def normalise(text: str) -> str:
    """Lower case, accents stripped, every run of non-alphanumerics one space."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text).split())


def what_changed(probes: list[Probe], instead: str) -> list[Probe]:
    """The probes of a superseded memory that ask about what its update changed: those with an
    expected span the update (`instead`) does not say. "The ferry is named the Marigold." updated
    to "... renamed the Wild Marigold." leaves none: nothing to unlearn but the old sentence, and
    an answer about the new name must not count as the old one recalled."""
    new = f" {normalise(instead)} "
    return [p for p in probes if any(f" {e} " not in new for e in map(normalise, p.expected) if e)]


def answer_matches(answer: str, expected: Iterable[str]) -> bool:
    """Some expected span occurs in `answer` as whole words ("7" is not found in "17")."""
    hay = f" {normalise(answer)} "
    return any(f" {e} " in hay for e in map(normalise, expected) if e)


def number_words(n: int) -> str | None:
    """19 -> "nineteen", 42 -> "forty-two", 3000 -> "three thousand"; None where not simple."""
    if 0 <= n < 20:
        return _ONES[n]
    if 20 <= n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if 100 <= n < 1000 and n % 100 == 0:
        return _ONES[n // 100] + " hundred"
    if 1000 <= n < 100_000 and n % 1000 == 0:
        return number_words(n // 1000) + " thousand"
    return None


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _expected(span: str, line: str) -> tuple[str, ...]:
    """Acceptable answers for a span: itself; for a number its plain digits, its ordinal and the
    number in words where simple; for a name, without a sentence-start word ("Mireille Okafor"
    of "Composer Mireille Okafor"), and its last word if that is distinctive ("Tarrago")."""
    out = [span]
    if _NUMBER.fullmatch(span):
        digits = span.replace(",", "")
        out.append(digits)
        if digits.isdigit():
            n = int(digits)
            if n < 100:
                out.append(_ordinal(n))
            if (w := number_words(n)) is not None:
                out.append(w)
        return tuple(dict.fromkeys(out))
    words = span.split()
    if line.startswith(span) and len(words) >= 2:
        rest = words[1:]
        while rest and rest[0].lower() in _GENERIC:
            rest = rest[1:]
        if rest and any(len(w) >= 4 and w.lower() not in _GENERIC for w in rest):
            out.append(" ".join(rest))
    last = words[-1]
    if len(words) >= 2 and len(last) >= 4 and last.lower() not in _GENERIC:
        out.append(last)
    return tuple(dict.fromkeys(out))


# --- probes ----------------------------------------------------------------------------------

def _rank(text: str, span: str) -> str:
    return hashlib.sha256(f"{text}\x00{span}".encode()).hexdigest()


def key_spans(line: str) -> list[str]:
    """The names and numbers of a line that the bake's cloze probes blank, in that order."""
    line = item_text(line)
    return [s for s in dict.fromkeys(names(line) + _NUMBER.findall(line)) if s in line]


def verification_probes(item_id, text: str, max_probes: int = 4) -> list[Probe]:
    """Questions about one memory the bake will not train on, up to `max_probes`.

    Held-out cloze probes come first: at most half of the memory's cloze probes (at least one), the
    spans picked by a hash of text and span, never more than half of `max_probes` (at least one).
    A held-out name's nested spans ("4" of "Vashti-4") are held out with it, beyond the cap: their
    cloze probe, trained, would teach the name. Completion probes fill the rest, for the held-out
    spans first, then the others in text order (only where at least three words precede the span).
    A memory without a name or number, or an instruction ("Always answer in French."), has none: [].
    """
    spans: list[tuple[str, str]] = []  # (line, span), text order
    nested: dict[tuple[str, str], list[str]] = {}  # a span's spans inside it ("4" of "Vashti-4")
    for item in prompt_items(text):
        words = item_text(item).split()
        if len(words) < 4 or is_header(item):  # probe_questions does not probe headers and fragments either
            continue
        line = item_text(item)
        if BEHAVIOUR.match(line):
            continue
        found = key_spans(line)
        for s in found:
            outer = [o for o in found if o != s and s in o]
            if outer:
                nested.setdefault((line, outer[0]), []).append(s)
            else:
                spans.append((line, s))
    spans = list(dict.fromkeys(spans))
    if not spans or max_probes < 1:
        return []
    n_held = min(max(1, len(spans) // 2), max(1, max_probes // 2))
    held = sorted(spans, key=lambda ls: _rank(text, ls[1]))[:n_held]
    held = [ls for ls in spans if ls in held]  # back in text order
    probes: list[Probe] = []

    def add(question: str, line: str, span: str, kind: str, force: bool = False):
        q = normalise(question)
        expected = tuple(e for e in _expected(span, line) if f" {normalise(e)} " not in f" {q} ")
        if expected and (force or len(probes) < max_probes) and question not in {p.question for p in probes}:
            probes.append(Probe(item_id, question, expected, kind))

    def cloze(line: str, span: str, force: bool = False):
        what = line.rstrip(".!?;: ").replace(span, "what", 1)
        for t in _CLOZE_TEMPLATES:  # every variant, so excluding these leaves none in training
            add(t.format(what=what), line, span, "cloze", force)

    for line, span in held:
        cloze(line, span)
        for inner in nested.get((line, span), ()):  # "...named Vashti-what...?" would teach
            cloze(line, inner, force=True)           # the held-out "Vashti-4": hold it out too
    for line, span in held + [ls for ls in spans if ls not in held]:
        prefix = line[: line.index(span)].rstrip(" ,;:-")
        if len(prefix.split()) >= 3:
            add(COMPLETE_TEMPLATE.format(prefix=prefix), line, span, "complete")
    return probes


def general_questions() -> list[dict]:
    """The shipped general-knowledge set: [{"id", "q", "answer": [acceptable substrings]}]."""
    raw = resources.files("baker").joinpath("data/general_questions.jsonl").read_text()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


# --- graduation rules ------------------------------------------------------------------------

RULES = {
    "any": "at least one probe answered",
    "majority": "more than half of the probes answered",
    "prompted": "at least one, and at least as many as the prompted model answered",
    "strict": "majority and prompted",
    "hot": "at least one, and at least as many as the served model answered with its hot tier",
}


def graduates(rule: str, hits: int, asked: int, prompted_hits: int | None = None,
              hot_hits: int | None = None) -> bool:
    """Whether a memory whose probes the weights answered `hits` of `asked` times graduates.
    Without a prompted reference (`prompted_hits` None), "prompted" is "any", "strict" "majority";
    without the hot tier's (`hot_hits` None: the served model with the prompt each probe would get
    from the hot tier), "hot" is "majority"."""
    if asked < 1 or hits < 1:
        return False
    majority = 2 * hits > asked
    prompted = prompted_hits is None or hits >= prompted_hits
    hot = majority if hot_hits is None else hits >= hot_hits
    return {"any": True, "majority": majority, "prompted": prompted, "strict": majority and prompted,
            "hot": hot}[rule]


def reference_hits(model_dir, adapter_dir, probes: list[Probe], systems: list[str | None],
                   sampler: str = "auto", max_new_tokens: int = 32) -> dict[Any, dict]:
    """How well the model as served (`adapter_dir`: the served stack, None: the base) answers each
    probe with the system prompt it would get (`systems[i]` for `probes[i]`: the hot tier's, built
    for that question): {item_id: {"hits", "asked", "answers"}}. The reference of rule "hot"."""
    if len(systems) != len(probes):
        raise ValueError(f"{len(probes)} probes but {len(systems)} system prompts")
    if not probes:
        return {}
    ans, _ = ask_runs(model_dir, {"hot": (list(systems), adapter_dir is not None, [p.question for p in probes])},
                      adapter_dir, max_new_tokens, sampler)
    out: dict[Any, dict] = {}
    for p, a in zip(probes, ans["hot"]):
        r = out.setdefault(p.item_id, {"hits": 0, "asked": 0, "answers": []})
        hit = answer_matches(a, p.expected)
        r["hits"] += hit
        r["asked"] += 1
        r["answers"].append({"question": p.question, "answer": a, "hit": hit})
    return out


# --- verification ----------------------------------------------------------------------------

def verify(model_dir, adapter_dir, items: list[tuple[Any, str]], *, probes: list[Probe] | None = None,
           forgotten: Iterable[tuple] = (), general: bool = True, prompt: str | None = None,
           sampler: str = "auto", max_new_tokens: int = 32, rule: str = "any",
           max_probes: int = 4, behaviour: bool = True, hot_reference: dict | None = None) -> VerifyReport:
    """Check per memory that the model with `adapter_dir` (no prompt) knows it, and per forgotten
    memory (id, text), or superseded one (id, text, the update's text: `what_changed`), that it
    no longer does; with `general`, how many general questions the base answers
    right and the adapter still does. `probes` (e.g. kept from before the bake, whose cloze
    questions were excluded from training) replace the computed ones for the items they name;
    the others get `verification_probes(id, text, max_probes)`. With `prompt`, the base model with
    it as system prompt answers the items' probes too, as a reference (prompted_hits).
    `hot_reference` ({item_id: hits}, from `reference_hits`) is what rule "hot" compares with.
    An item passes when `graduates(rule, ...)` holds for its probes (see RULES). With `behaviour`,
    an item with persona or instruction lines must also pass `baker.behaviour.check_behaviours`
    (the adapter carries the lines' effect on unrelated requests); one with no probe at all (an
    instruction) is verifiable by that check alone.
    `adapter_dir=None` checks the base model itself (baked answers = base answers).
    All answers are greedy, from one engine. On vLLM's CPU build the adapter run is the slow part
    (~5x the base run: its punica ops gather LoRA weights per token); 20 headlines + the general
    set took ~90 s on a shared 2-core box."""
    t0 = time.perf_counter()
    if rule not in RULES:
        raise ValueError(f"unknown graduation rule {rule!r}; one of {', '.join(RULES)}")
    if adapter_dir is not None:
        adapter_dir = check_adapter(adapter_dir)
    items, forgotten = list(items), list(forgotten)
    given: dict[Any, list[Probe]] = {}
    for p in probes or ():
        given.setdefault(p.item_id, []).append(p)

    def probes_of(item_id, text):
        return given[item_id] if item_id in given else verification_probes(item_id, text, max_probes)

    item_probes = [probes_of(i, t) for i, t in items]
    # a superseded memory (id, text, its update): only what the update changed
    gone_probes = [what_changed(probes_of(i, t), new[0]) if new and new[0] else probes_of(i, t)
                   for i, t, *new in forgotten]
    flat_items = [p for ps in item_probes for p in ps]
    flat_all = flat_items + [p for ps in gone_probes for p in ps]
    gq = general_questions() if general else []
    plain = [p.question for p in flat_all] + [g["q"] for g in gq]
    runs = {"base": (None, False, plain)}
    if adapter_dir is not None:
        runs["baked"] = (None, True, plain)
    if prompt:
        runs["prompted"] = (prompt, False, [p.question for p in flat_items])
    ans, sampler_name = ask_runs(model_dir, runs, adapter_dir, max_new_tokens, sampler)
    if adapter_dir is None:
        ans["baked"] = ans["base"]

    def rows(ps: list[Probe], offset: int, with_prompt: bool) -> list[dict]:
        out = []
        for j, p in enumerate(ps):
            base, baked = ans["base"][offset + j], ans["baked"][offset + j]
            row = {"question": p.question, "kind": p.kind, "expected": list(p.expected),
                   "baked": baked, "hit": answer_matches(baked, p.expected),
                   "base": base, "base_hit": answer_matches(base, p.expected)}
            if with_prompt:
                row["prompted"] = ans["prompted"][offset + j]
                row["prompted_hit"] = answer_matches(row["prompted"], p.expected)
            out.append(row)
        return out

    acts = {}
    if behaviour and (kinds := [(i, t) for i, t in items if behaviour_lines(t)]):
        from .behaviour import check_behaviours

        acts = check_behaviours(model_dir, adapter_dir, kinds, max_new_tokens=max_new_tokens)
    results, offset = [], 0
    for (item_id, _), ps in zip(items, item_probes):
        r = rows(ps, offset, bool(prompt))
        offset += len(ps)
        hits = sum(x["hit"] for x in r)
        prompted = sum(x["prompted_hit"] for x in r) if prompt else None
        act = acts.get(item_id)
        hot = (hot_reference or {}).get(item_id)
        passed = ((graduates(rule, hits, len(ps), prompted, hot) if ps else act is not None)
                  and (act is None or act.passed))
        results.append(ItemResult(
            item_id, passed=passed, hits=hits, asked=len(ps), answers=r, verifiable=bool(ps) or act is not None,
            base_hits=sum(x["base_hit"] for x in r), prompted_hits=prompted, hot_hits=hot,
            behaviour=act.to_dict() if act else None))
    gone = []
    for (item_id, *_), ps in zip(forgotten, gone_probes):
        r = rows(ps, offset, False)
        offset += len(ps)
        hits = sum(x["hit"] for x in r)
        # recalled: a probe the candidate answers that the base model does not (what the base
        # answers by itself was never the memory's doing)
        recalled = any(x["hit"] and not x["base_hit"] for x in r)
        gone.append(ForgottenResult(item_id, recalled=recalled, hits=hits, asked=len(ps), answers=r,
                                    verifiable=bool(ps), base_hits=sum(x["base_hit"] for x in r)))
    general_report = None
    if general:
        n = len(flat_all)
        base_right = [g["id"] for j, g in enumerate(gq) if answer_matches(ans["base"][n + j], g["answer"])]
        baked_right = {g["id"] for j, g in enumerate(gq) if answer_matches(ans["baked"][n + j], g["answer"])}
        kept = [i for i in base_right if i in baked_right]
        general_report = {"asked": len(gq), "base_right": len(base_right), "kept": len(kept),
                          "kept_fraction": len(kept) / len(base_right) if base_right else None,
                          "changed": [i for i in base_right if i not in baked_right]}
    return VerifyReport(results, gone, general_report, round(time.perf_counter() - t0, 2), sampler_name)


# --- a CLI bake's own check ------------------------------------------------------------------

def prompt_probes(prompt: str, max_probes: int = 4) -> tuple[list[tuple[int, str]], list[Probe]]:
    """A prompt's lines as verifier items (index, line) and their probes: pass
    `[p.question for p in probes]` as the bake's `exclude_contexts` so its cloze probes stay unseen."""
    items = list(enumerate(prompt_items(prompt)))
    return items, [p for i, line in items for p in verification_probes(i, line, max_probes)]


def check_bake(model_dir, bake_dir, prompt: str, probes: list[Probe], parent=None,
               sampler: str = "auto") -> VerifyReport:
    """Recall before / after for a finished bake: the base model, the prompted base and the baked
    model (the layer on `parent`, stacked exactly, when it is a sequential layer) answer `probes`;
    the general set shows what the bake changed elsewhere."""
    import tempfile
    from pathlib import Path

    from .adapters import stack_adapters

    items, _ = prompt_probes(prompt)
    with tempfile.TemporaryDirectory(prefix=".check-", dir=Path(bake_dir).parent) as tmp:
        adapter = stack_adapters([parent, bake_dir], Path(tmp) / "stack") if parent else bake_dir
        return verify(model_dir, adapter, items, probes=probes, prompt=prompt, sampler=sampler)
