"""Greedy batch answers from a base model, optionally with an adapter and/or a system prompt."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .chat import chat_ids
from .errors import AdapterError, BakeError
from .interrupt import exit_on_sigterm
from .models import context_length
from .sampling import open_sampler


def read_questions(path: str | os.PathLike) -> list[dict]:
    """JSONL lines {"id", "prompt"}; a bad line is an error naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise BakeError(f"cannot read input {path}: {e}") from e
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BakeError(f"{path}:{n}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or "id" not in obj:
            raise BakeError(f'{path}:{n}: expected an object with "id" and a string "prompt"')
        items.append({"id": obj["id"], "prompt": obj["prompt"]})
    if not items:
        raise BakeError(f"input {path} holds no questions")
    return items


def check_adapter(adapter_dir: str | os.PathLike) -> Path:
    path = Path(adapter_dir)
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"not a PEFT adapter directory (no adapter_config.json): {path}")
    if not any(path.glob("adapter_model.*")):
        raise AdapterError(f"adapter directory has no adapter_model weights: {path}")
    try:
        json.loads((path / "adapter_config.json").read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"corrupt adapter_config.json in {path}: {e.msg}") from e
    return path


def generate_answers(model_dir, items: list[dict], adapter_dir=None, system: str | None = None,
                     max_new_tokens: int = 64, sampler: str = "auto", seed: int = 0) -> list[dict]:
    """Greedy answers: [{"id", "prompt", "text"}] in input order."""
    runs = {"text": (system, True)}
    return compare_answers(model_dir, items, runs, adapter_dir, max_new_tokens, sampler, seed)


@exit_on_sigterm()  # `kill` shuts vLLM's engine processes down instead of orphaning them
def compare_answers(model_dir, items: list[dict], runs: dict[str, tuple[str | None, bool]],
                    adapter_dir=None, max_new_tokens: int = 64, sampler: str = "auto",
                    seed: int = 0) -> list[dict]:
    """Several greedy runs from one engine: `runs` maps an output key to (system prompt, use the
    adapter?), e.g. {"base": (None, False), "prompted": (prompt, False), "baked": (None, True)}."""
    questions = [it["prompt"] for it in items]
    answers, _ = ask_runs(model_dir, {k: (system, use, questions) for k, (system, use) in runs.items()},
                          adapter_dir, max_new_tokens, sampler, seed)
    return [{**it, **{key: answers[key][i] for key in runs}} for i, it in enumerate(items)]


def ask_runs(model_dir, runs: dict[str, tuple[str | None, bool, list[str]]], adapter_dir=None,
             max_new_tokens: int = 64, sampler: str = "auto", seed: int = 0) -> tuple[dict[str, list[str]], str]:
    """Greedy answers from one engine: `runs` maps a key to (system prompt, use the adapter?,
    user messages); the system prompt may be a list, one per message. Returns ({key: [answer,
    ...]}, the sampler's name)."""
    from transformers import AutoConfig, AutoTokenizer

    if adapter_dir is not None:
        adapter_dir = check_adapter(adapter_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    max_len = context_length(AutoConfig.from_pretrained(model_dir))
    prompts = {k: [chat_ids(tok, q, s) for q, s in zip(qs, system if isinstance(system, list) else [system] * len(qs))]
               for k, (system, _, qs) in runs.items() if qs}
    if not prompts:
        return {k: [] for k in runs}, ""
    longest = max(len(p) for ps in prompts.values() for p in ps)
    if longest + max_new_tokens > max_len:
        raise BakeError(f"the longest input is {longest} tokens; with {max_new_tokens} new tokens it "
                        f"exceeds the model's context of {max_len}")
    s = open_sampler(sampler, model_dir, adapter_dir, seed=seed, max_model_len=min(max_len, longest + max_new_tokens + 16))
    try:
        with exit_on_sigterm():
            gens = {k: s.generate(prompts[k], max_new_tokens, temperature=None, use_adapter=runs[k][1])
                    for k in prompts}
    except BakeError:
        raise
    except Exception as e:  # a corrupt adapter surfaces only when vLLM/PEFT first uses it
        if adapter_dir is None:
            raise
        raise AdapterError(f"generation with adapter {adapter_dir} failed: {e}") from e
    finally:
        s.close()
    decode = lambda g: tok.decode(g, skip_special_tokens=True).strip()  # noqa: E731
    return {k: [decode(g) for g in gens.get(k, [])] for k in runs}, s.name


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write atomically: the output appears whole or not at all."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise BakeError(f"cannot write output {path}: {e}") from e
    with os.fdopen(fd, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
