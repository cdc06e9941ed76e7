"""The examples, run as a user runs them (`python examples/X.py --quick`), on the embedded SmolLM2
with no network. Each starts its own `bakehouse run`; the model cache is the session's.

What is asserted is what the runtime guarantees, not what a 135M model happens to say: which
version served each answer, what the hot prompt cost, that no persona crosses a tenant, and that
a bake that graduates something takes it out of the prompt."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, tmp_path: Path, smollm2_dir: Path, *args: str, timeout: float = 1800) -> dict:
    """Run examples/NAME.py --quick in a data home whose model cache is the session's; its JSON."""
    pytest.importorskip("vllm")
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / smollm2_dir.name).symlink_to(smollm2_dir)
    out = tmp_path / "result.json"
    p = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--home", str(home),
                        "--out", str(out), *args], capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, BAKEHOUSE_HOME=str(home)))
    print(p.stdout[-6000:])
    assert p.returncode == 0, f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return json.loads(out.read_text())


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_personas(tmp_path, smollm2_dir):
    from transformers import AutoTokenizer

    from baker.chat import chat_ids
    from memory import MemoryStore

    personas = load("personas").PERSONAS
    r = run_example("personas", tmp_path, smollm2_dir)
    rows = r["answers"]
    assert sorted(a["tenant"] for a in rows) == sorted(personas)
    # what reached the engine for each tenant is its own persona: vLLM counted exactly the chat
    # template over that tenant's hot prompt (composed as the runtime composes it) and the question
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    with MemoryStore.in_home(tmp_path / "compose", actor="test") as store:
        hot = {t: store.compose(store.add(t, "persona", p).tenant).text for t, (p, _) in personas.items()}
    for a in rows:
        assert a["model"] == a["version"] == "base"  # one shared base, no adapter
        assert a["hot_tokens"] > 0
        assert a["prompt_tokens"] == len(chat_ids(tok, a["question"], hot[a["tenant"]])), a
        others = [t for t in personas if t != a["tenant"]]
        assert all(a["prompt_tokens"] != len(chat_ids(tok, a["question"], hot[t])) for t in others)
    assert r["crossed"] == 0, [a for a in rows if a["other_names"]]  # no persona's name in another's answers
    print(f"{r['own_name']} of {len(rows)} answers used their own persona's name")


def test_news_feed(tmp_path, smollm2_dir):
    r = run_example("news_feed", tmp_path, smollm2_dir)
    hot, baked, job = r["hot"], r["baked"], r["job"]
    assert all(a["model"] == "base" for a in hot)  # from the hot tier: no adapter yet
    assert job["state"] in ("done", "rejected"), job
    if r["graduated"]:
        assert job["state"] == "done" and r["version"] == "reader@v1"
        assert all(a["model"] == "reader@v1" for a in baked)
        # graduated headlines left the prompts of the questions about them (each prompt holds only
        # what its question is about, so the sum shrinks, not necessarily the first question's)
        assert sum(a["prompt_tokens"] for a in baked) < sum(a["prompt_tokens"] for a in hot)
    else:  # nothing graduated: the base serves on, with the same hot prompt
        assert all(a["model"] == "base" for a in baked)
        assert [a["prompt_tokens"] for a in baked] == [a["prompt_tokens"] for a in hot]


def test_assistant_learns_the_instruction_hot_at_once(tmp_path, smollm2_dir):
    """The hot half only: the idle bake after it is the one test_news_feed runs (for this
    instruction it is rejected, it has no name or number for the verifier to ask about)."""
    r = run_example("assistant", tmp_path, smollm2_dir, "--hot-only")
    before, hot = r["turns"]
    assert before["version"] == hot["version"] == "base"
    assert before["hot_tokens"] == 0 and hot["hot_tokens"] > 0  # the instruction is in the prompt
    assert hot["prompt_tokens"] != before["prompt_tokens"]
