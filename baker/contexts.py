"""Contexts the trajectories start from: user requests the teacher answers with the prompt in view.

Three sources, so that both style and knowledge are probed:
1. a shipped generic set of diverse user requests (`data/generic_requests.txt`);
2. questions derived from each line of the prompt ("What do you know about <its opening words>?"),
   which make the teacher recall the line's content;
3. questions the prompted model writes about its own prompt (see `self_question_request`);
plus an optional user file (one request per line, or JSONL with a "prompt" field).
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import BakeError

SELF_QUESTION_REQUEST = (
    "Write one short question that a user could ask you about the information in your "
    "instructions. Reply with the question only."
)
_PROBE_TEMPLATES = ("What do you know about {head}?", "Tell me more: {head}")
_DATE_PREFIX = re.compile(r"^\s*(?:[-*•]\s*)?(?:\(?\d{4}-\d{2}-\d{2}\)?[:\s-]*)?")


@dataclass(frozen=True)
class Context:
    text: str
    source: str  # "generic" | "probe" | "self" | "user"


def generic_requests() -> list[str]:
    raw = resources.files("baker").joinpath("data/generic_requests.txt").read_text()
    return [line.strip() for line in raw.splitlines() if line.strip() and not line.startswith("#")]


def prompt_items(prompt: str) -> list[str]:
    """The prompt's lines; a single long paragraph is split into sentences instead."""
    lines = [line.strip() for line in prompt.splitlines() if line.strip()]
    if len(lines) == 1:
        lines = [s.strip() for s in re.split(r"(?<=[.!?])\s+", lines[0]) if s.strip()]
    return lines


def probe_questions(prompt: str) -> list[str]:
    """Questions that name the opening words of each prompt line and leave the rest to recall."""
    out = []
    for item in prompt_items(prompt):
        words = _DATE_PREFIX.sub("", item).split()
        if len(words) < 4:  # headers and fragments carry too little to probe
            continue
        head = " ".join(words[: max(3, min(8, len(words) // 2))]).rstrip(",;:")
        out.extend(t.format(head=head) for t in _PROBE_TEMPLATES)
    return out


def clean_self_questions(texts: list[str], limit: int) -> list[str]:
    """Keep the first question of each generated text; drop empty, overlong and duplicate ones."""
    seen, out = set(), []
    for text in texts:
        first = text.strip().split("\n")[0].strip().strip('"')
        if "?" in first:
            first = first[: first.index("?") + 1]
        key = first.lower()
        if 8 <= len(first) <= 200 and first.endswith("?") and key not in seen:
            seen.add(key)
            out.append(first)
        if len(out) >= limit:
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
    for source in ("generic", "probe", "self", "user"):
        group = [c for c in contexts if c.source == source]
        rng.shuffle(group)
        k = round(len(group) * heldout_fraction) if len(group) > 1 else 0
        held += group[:k]
        train += group[k:]
    return train, held
