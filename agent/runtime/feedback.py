"""Instructions learned from users' feedback (procedural memory).

Feedback reaches the runtime through the gateway's queue (serving/feedback.py) or straight from
`bakehouse feedback`. A comment that states a rule ("from now on answer in one sentence") becomes
that rule as an `instruction` memory: hot at once, baked like any memory. A comment that states no
rule ("that was far too long") about a conversation the runtime recorded (agent/runtime/episodes.py)
goes to the tenant's own model, which proposes one instruction from the conversation and the
comment; the proposal is kept only if it passes the same checks as a stated rule and is new.
Anything else (and a bare rating) is kept in the queue file only. Whether a rule is admitted at
once, waits for the operator (`bakehouse instructions approve`) or is quarantined follows the
tenant's policy and memory.screen (see `learn`).

A new instruction that contradicts an older one supersedes it (`contradicts`: the same verb and
object with the opposite polarity, "Always use emojis." / "Never use emojis."; or the same setting
with another value, "Answer in one sentence." / "Answer in detail.", "Call me Sam." / "Call me Al.").
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from memory import Memory, MemoryStore, UnknownTenant, content_hash
from memory.screen import screen_rule
from serving.feedback import read_feedback

from .episodes import Complete, transcript
from .queues import OffsetFile

log = logging.getLogger("bakehouse.runtime.feedback")

MAX_RULE_CHARS = 200
_LEAD = r"(?:(?:from now on|in (?:the )?future|going forward|next time|in general|generally)[,:]?\s+)?(?:please\s+)?"
_VERB = (r"(?:always|never|don't|do not|answer|reply|respond|use|write|speak|be|keep|avoid|stop|start|"
         r"call me|address me|end|begin|include|give|say|talk|explain|add|mention|list|show)\b")
_RULE = re.compile(rf"^{_LEAD}(?P<rule>{_VERB}.*)$", re.I)


def rule_from_comment(comment: str | None) -> str | None:
    """The instruction a comment states, as one sentence ("Answer in one sentence."), or None.
    Only a single short imperative sentence counts; a question or a complaint is no rule."""
    text = " ".join((comment or "").split()).rstrip(" .!")
    if not text or len(text) > MAX_RULE_CHARS or "?" in text or re.search(r"[.!;]\s", text):
        return None
    m = _RULE.match(text)
    if not m or len(m.group("rule").split()) < 2:
        return None
    rule = m.group("rule")
    return rule[0].upper() + rule[1:] + "."


# -- contradictions -----------------------------------------------------------------------------

_NEGATIVE = re.compile(r"^(?:never|don't)\s+")
_POSITIVE = re.compile(r"^(?:always|do)\s+")
# leading verb phrases that set one thing: the same phrase with another tail is a new value
_SETTINGS = {
    "answer in": "reply", "reply in": "reply", "respond in": "reply", "write in": "reply",
    "speak in": "reply", "talk in": "reply",
    "call me": "name", "address me as": "name",
}
_LANGUAGES = set("""english french german spanish italian portuguese dutch swedish norwegian danish
finnish polish czech greek turkish russian ukrainian arabic hebrew hindi chinese mandarin cantonese
japanese korean vietnamese thai indonesian latin esperanto catalan""".split())


def _polarity(rule: str) -> tuple[bool, str]:
    """(positive?, the rule without always / never / do / don't), lower case, no full stop."""
    t = " ".join(rule.lower().replace("do not ", "don't ").split()).rstrip(" .!")
    if m := _NEGATIVE.match(t):
        return False, t[m.end():]
    if m := _POSITIVE.match(t):
        return True, t[m.end():]
    return True, t


def _setting(rest: str) -> tuple[str, str] | None:
    """(what the rule sets, its value) for a rule that starts with one of _SETTINGS."""
    for lead in sorted(_SETTINGS, key=len, reverse=True):
        if rest.startswith(lead + " "):
            key, value = _SETTINGS[lead], rest[len(lead) + 1:]
            if key == "reply":  # the language of a reply and its length are separate settings
                key += ":language" if value.split()[0] in _LANGUAGES else ":form"
            return key, value
    return None


def contradicts(new: str, old: str) -> bool:
    """True if instruction `new` overrides `old`: the same verb and object with the opposite
    polarity (always / never, do / don't), or both set the same thing to different values
    (answer in ..., reply in ..., call me ...). Unrelated instructions never contradict."""
    (pos_new, rest_new), (pos_old, rest_old) = _polarity(new), _polarity(old)
    if rest_new == rest_old:
        return pos_new != pos_old
    if pos_new and pos_old:
        a, b = _setting(rest_new), _setting(rest_old)
        return a is not None and b is not None and a[0] == b[0] and a[1] != b[1]
    return False


# -- learning ------------------------------------------------------------------------------------

def learn(store: MemoryStore, tenant: str, comment: str | None, rating: int | None = None,
          conversation_id: str | None = None, feedback_id: str | None = None,
          complete: Complete | None = None, user: str | None = None, operator: bool = False) -> Memory | None:
    """Store the instruction `comment` states for `tenant`, or, if it states none, the one the
    tenant's model proposes from the recorded conversation (`complete`; None: no proposal).

    What becomes of it follows the tenant's policy (memory.trust): `review` stores a proposal the
    operator approves, `auto` an instruction at once (scoped to `user`, the end user who gave the
    feedback, when one is named), `off` nothing. A rule that reads as an order to leak, advertise
    or change the persona (memory.screen) is stored quarantined whatever the policy. `operator`:
    the operator's own feedback (`bakehouse feedback`), admitted at once for the whole tenant.
    Returns the memory stored (an instruction superseding any it contradicts), or None."""
    policy = store.trust.policy(tenant)
    if not operator and policy.learn_instructions == "off":
        log.info("feedback (%s): not learned (policy learn_instructions=off)", tenant)
        return None
    rule, how = rule_from_comment(comment), "stated"
    if rule is None:
        rule, how = propose_rule(store, tenant, comment, conversation_id, complete, user), "proposed"
    if rule is None:
        return None
    meta = {k: v for k, v in {"feedback_id": feedback_id, "conversation_id": conversation_id,
                              "rating": rating, "comment": (comment or "")[:500], "rule": how}.items()
            if v is not None}
    source = "cli" if operator else f"feedback:{conversation_id or feedback_id or 'none'}"
    if operator:
        return add_instruction(store, tenant, rule, meta, source=source)
    verdict = screen_rule(rule)
    if verdict.clean and policy.learn_instructions == "auto":
        return add_instruction(store, tenant, rule, meta, source=source, user=user)
    if not verdict.clean:
        log.warning("feedback (%s): rule %r quarantined: %s", tenant, rule, verdict.reason)
    held = ("quarantined", verdict.reason) if not verdict.clean else \
        ("proposed", "a rule from feedback, waiting for the operator")
    return store.add(tenant, "instruction", rule, source=source, meta=meta, end_user=user,
                     admission=held[0], admission_reason=held[1])


def add_instruction(store: MemoryStore, tenant: str, rule: str, meta: dict | None = None, *,
                    source: str = "feedback", user: str | None = None) -> Memory:
    """Store `rule` as an instruction (of end user `user`, or the tenant's); it supersedes every
    live instruction of the same scope it contradicts."""
    with store.transaction():
        old = [m for m in _instructions(store, tenant, user) if contradicts(rule, m.text)]
        if not old:
            return store.add(tenant, "instruction", rule, source=source, meta=meta, end_user=user)
        new = store.supersede(old[0].id, rule, source=source, meta=meta)
        for m in old[1:]:  # the same new text: linked to the one new memory
            store.supersede(m.id, rule, source=source, meta=meta)
    log.info("instruction #%d (%s) %r supersedes %s", new.id, tenant, rule,
             ", ".join(f"#{m.id} {m.text!r}" for m in old))
    return new


def approve(store: MemoryStore, memory_id: int, *, tenant_wide: bool = True) -> Memory:
    """The operator admits a proposed or quarantined memory; an instruction supersedes the live
    instructions of its new scope that it contradicts, as a stated rule would."""
    m = store.get(memory_id)
    user = None if tenant_wide else m.end_user
    old = [x.id for x in _instructions(store, m.tenant, user) if contradicts(m.text, x.text)] \
        if m.kind == "instruction" else []
    return store.trust.approve(memory_id, tenant_wide=tenant_wide, supersedes=old)


def _instructions(store: MemoryStore, tenant: str, user: str | None = None) -> list[Memory]:
    """The live, admitted instructions of one scope: the tenant's, or end user `user`'s."""
    try:
        return [m for m in store.memories(tenant, kind="instruction", valid_only=True, users=user or False)
                if m.end_user == user]
    except UnknownTenant:  # its first memory creates the tenant
        return []


def propose_messages(conversation: str, comment: str) -> list[dict]:
    return [{"role": "user", "content": f"Here is a conversation between a user and an assistant:\n\n"
                                        f"{conversation}\n\nThe user's feedback: {comment}\n\n"
                                        "Write one short instruction for the assistant, in the imperative, "
                                        "that follows this feedback. Reply with the instruction only."}]


def propose_rule(store: MemoryStore, tenant: str, comment: str | None, conversation_id: str | None,
                 complete: Complete | None, user: str | None = None) -> str | None:
    """The instruction the tenant's model proposes for a comment that states none, from the
    recorded conversation; None (logged) unless it is one short imperative sentence and new."""
    if complete is None or not (comment or "").strip() or not conversation_id:
        return None
    ep = store.conversation_episode(tenant, conversation_id, user)
    if ep is None:
        log.info("feedback (%s) on conversation %s: no rule stated and no episode recorded", tenant, conversation_id)
        return None
    try:
        answer = complete(tenant, propose_messages(transcript(ep), comment.strip()), max_tokens=40, temperature=0.0)
    except Exception as e:
        log.warning("feedback (%s) on episode %d: no instruction proposed: %s", tenant, ep.id, e)
        return None
    cleaned = re.sub(r"^\s*(?:instruction\s*:\s*)?", "", (answer or "").strip(), flags=re.I).strip().strip('"\'')
    rule = rule_from_comment(cleaned)
    if rule is None:
        log.info("feedback (%s) on episode %d: the proposal %r is no instruction; nothing stored",
                 tenant, ep.id, (answer or "")[:200])
        return None
    if any(m.content_hash == content_hash(rule) for m in _instructions(store, tenant)):
        log.info("feedback (%s) on episode %d: the proposal %r is already an instruction", tenant, ep.id, rule)
        return None
    log.info("feedback (%s) on episode %d: the model proposes %r", tenant, ep.id, rule)
    return rule


class FeedbackReader:
    """Reads the gateway's feedback queue from where it stopped (HOME/runtime/feedback.offset).
    `complete` (the tenant's served model) proposes instructions for comments that state none."""

    def __init__(self, store: MemoryStore, home: Path, complete: Complete | None = None):
        self.store, self.home, self.complete = store, Path(home), complete
        self.offset = OffsetFile(self.home / "runtime" / "feedback.offset")

    def poll(self) -> list[Memory]:
        """Learn from every new piece of feedback; returns the instructions stored."""
        records, end = read_feedback(self.home, self.offset.get())
        learned = []
        for r in records:
            m = learn(self.store, r["tenant"], r.get("comment"), r.get("rating"), r.get("conversation_id"),
                      r.get("id"), complete=self.complete, user=r.get("user"))
            if m is not None and m.created:
                learned.append(m)
        if records:  # after the memories: a crash in between learns a rule twice, which add() dedupes
            self.offset.set(end)
        return learned
