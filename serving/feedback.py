"""Feedback from tenants' users (`POST /v1/feedback`), queued for the runtime.

serving/ does not know the memory store: the gateway appends each piece of feedback as one JSON
line to HOME/serving/feedback.jsonl (see jsonl.py), and the runtime (agent/runtime/feedback.py)
reads what is new and turns it into memories.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path

from .errors import BadRequest
from .jsonl import append_line, read_lines

FEEDBACK_FILE = "feedback.jsonl"
MAX_COMMENT_CHARS = 2000


def feedback_path(home: Path) -> Path:
    return Path(home) / "serving" / FEEDBACK_FILE


def check_feedback(body: object) -> dict:
    """The fields of a feedback request, checked: {"comment", "rating", "conversation_id", "user"}."""
    if not isinstance(body, dict):
        raise BadRequest("feedback must be a JSON object")
    unknown = sorted(set(body) - {"comment", "rating", "conversation_id", "user"})
    if unknown:
        raise BadRequest(f"unsupported field {unknown[0]!r} in feedback")
    comment, rating, conv = body.get("comment"), body.get("rating"), body.get("conversation_id")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS):
        raise BadRequest(f"'comment' must be a string of at most {MAX_COMMENT_CHARS} characters")
    if rating is not None and (type(rating) is not int or not -1 <= rating <= 1):
        raise BadRequest("'rating' must be -1 (bad), 0 or 1 (good)")
    if conv is not None and (not isinstance(conv, str) or not 0 < len(conv) <= 200):
        raise BadRequest("'conversation_id' must be a string of at most 200 characters")
    if not (comment or "").strip() and rating is None:
        raise BadRequest("feedback needs a 'comment' or a 'rating'")
    return {"comment": (comment or "").strip(), "rating": rating, "conversation_id": conv}


def append_feedback(home: Path, tenant: str, fields: dict) -> dict:
    """Queue one piece of feedback; returns the record (with its id)."""
    record = {"id": uuid.uuid4().hex, "tenant": tenant, "at": time.time(), **fields}
    append_line(feedback_path(home), record)
    return record


def read_feedback(home: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Whole records from byte `offset` on, and the offset after the last whole line."""
    return read_lines(feedback_path(home), offset)
