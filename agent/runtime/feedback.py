"""Instructions learned from users' feedback (procedural memory).

Feedback reaches the runtime through the gateway's queue (serving/feedback.py) or straight from
`bakehouse feedback`. A comment that states a rule ("from now on answer in one sentence") becomes
that rule as an `instruction` memory: hot at once, baked like any memory. A comment that states no
rule, and a bare rating, are kept in the queue file only.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from memory import Memory, MemoryStore
from serving.feedback import read_feedback

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


def learn(store: MemoryStore, tenant: str, comment: str | None, rating: int | None = None,
          conversation_id: str | None = None, feedback_id: str | None = None) -> Memory | None:
    """Store the instruction `comment` states for `tenant` (None if it states none)."""
    rule = rule_from_comment(comment)
    if rule is None:
        return None
    meta = {k: v for k, v in {"feedback_id": feedback_id, "conversation_id": conversation_id,
                              "rating": rating, "comment": (comment or "")[:500]}.items() if v is not None}
    return store.add(tenant, "instruction", rule, source="feedback", meta=meta)


class FeedbackReader:
    """Reads the gateway's feedback queue from where it stopped (HOME/runtime/feedback.offset)."""

    def __init__(self, store: MemoryStore, home: Path):
        self.store, self.home = store, Path(home)
        self.offset_path = self.home / "runtime" / "feedback.offset"
        self._offset: int | None = None  # read from the file once, then kept here

    def offset(self) -> int:
        if self._offset is None:
            try:
                self._offset = int(self.offset_path.read_text())
            except (FileNotFoundError, ValueError):
                self._offset = 0
        return self._offset

    def poll(self) -> list[Memory]:
        """Learn from every new piece of feedback; returns the instructions stored."""
        records, end = read_feedback(self.home, self.offset())
        learned = []
        for r in records:
            m = learn(self.store, r["tenant"], r.get("comment"), r.get("rating"), r.get("conversation_id"), r.get("id"))
            if m is not None and m.created:
                learned.append(m)
        if records:  # after the memories: a crash in between learns a rule twice, which add() dedupes
            self.offset_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.offset_path.with_suffix(".tmp")
            tmp.write_text(str(end))
            os.replace(tmp, self.offset_path)
            self._offset = end
        return learned
