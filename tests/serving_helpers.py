"""Helpers shared by the serving tests: small PEFT LoRA adapters on a base model, waiting for a
gateway to be ready, an engine without a process."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx


def make_adapter(
    base_dir: Path,
    out: Path,
    seed: int = 0,
    scale: float = 1.0,
    r: int = 8,
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    **lora_kwargs,
) -> Path:
    """A LoRA with random non-zero A and B (init_lora_weights=False), B scaled by `scale` so two
    adapters give visibly different greedy answers. Saved with save_pretrained into `out`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False, **lora_kwargs)
    get_peft_model(model, cfg).save_pretrained(out)
    if scale != 1.0:
        w = Path(out) / "adapter_model.safetensors"
        tensors = {k: (v * scale if "lora_B" in k else v) for k, v in load_file(str(w)).items()}
        save_file(tensors, str(w))
    return Path(out)


def corrupt_copy(src: Path, out: Path) -> Path:
    """The same adapter with its safetensors truncated (a half-written file)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_bytes((src / "adapter_config.json").read_bytes())
    data = (src / "adapter_model.safetensors").read_bytes()
    (out / "adapter_model.safetensors").write_bytes(data[: len(data) // 3])
    return out


def wait_ready(url: str, timeout: float) -> float:
    """Seconds until the gateway at `url` answers /ready with 200; TimeoutError after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"gateway not ready after {timeout:.0f} s")


class FakeEngine:
    """The Engine interface the gateway uses, without a process."""

    url, port, pid, restarts, last_error = "http://vllm.test", 1, 4242, 0, None

    def __init__(self):
        self.state, self.epoch, self.want_up, self.suspect = "stopped", 0, True, False

    def lost(self):
        self.suspect = True

    async def supervise(self, client, on_up):
        while True:
            if self.want_up and self.state != "up":
                self.epoch += 1
                self.state = "up"
                await on_up()
            await asyncio.sleep(0.02)

    def alive(self):
        return self.state == "up"

    def stop(self):
        self.state = "stopped"

    def lora_ops(self):
        return {"state": "n/a"}
