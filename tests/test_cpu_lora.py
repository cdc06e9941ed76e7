"""The grouped CPU LoRA ops give vLLM's numbers, and tokens without an adapter get no LoRA term."""
import os

import pytest
import torch

from serving import cpu_lora

ref = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

SLOTS, I, O, R = 4, 24, 40, 8
T = 13  # rows in the single-size tests


@pytest.fixture(params=[13, 200], ids=["decode-rows", "prefill-rows"])  # both code paths
def tensors(request):
    T = request.param
    g = torch.Generator().manual_seed(0)
    return {
        "x_in": torch.randn(T, I, generator=g),          # hidden states
        "x_r": torch.randn(T, R, generator=g),           # shrunk (rank-sized) states
        "a": torch.randn(SLOTS, 1, R, I, generator=g),   # lora A per slot (4-D, as vLLM stacks it)
        "b": torch.randn(SLOTS, O, R, generator=g),      # lora B per slot (3-D)
        "idx": torch.randint(0, SLOTS, (T,), generator=g),
    }


def test_shrink_matches_vllm(tensors):
    t = tensors
    T = len(t["idx"])
    want, got = torch.zeros(T, R), torch.zeros(T, R)
    ref.bgmv_shrink(t["x_in"], t["a"], want, t["idx"], 0.5)
    cpu_lora.bgmv_shrink(t["x_in"], t["a"], got, t["idx"], 0.5)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("add", [True, False])
def test_expand_matches_vllm(tensors, add):
    t = tensors
    T = len(t["idx"])
    start = torch.randn(T, O + 3)  # output wider than the adapter: the padding rule applies
    want, got = start.clone(), start.clone()
    ref.bgmv_expand(t["x_r"], t["b"], want, t["idx"], add)
    cpu_lora.bgmv_expand(t["x_r"], t["b"], got, t["idx"], add)
    torch.testing.assert_close(got, want)


def test_expand_slice_and_prefill_path_match_vllm(tensors, monkeypatch):
    t = tensors
    T = len(t["idx"])
    start = torch.randn(T, 2 * O)
    want, got = start.clone(), start.clone()
    ref.bgmv_expand_slice(t["x_r"], t["b"], want, t["idx"], O, O, True)
    cpu_lora.bgmv_expand_slice(t["x_r"], t["b"], got, t["idx"], O, O, True)
    torch.testing.assert_close(got, want)

    # prefill: vLLM's sgmv op explodes per-sequence indices and calls the (patched) bgmv op
    seq_idx, seq_len = torch.tensor([1, 3, 0]), torch.tensor([5, 4, T - 9])
    want = torch.zeros(T, R)
    ref.sgmv_shrink(t["x_in"], t["a"], want, None, seq_len, seq_idx, 3, T - 9, T, 1.0)
    monkeypatch.setattr(ref, "bgmv_shrink", cpu_lora.bgmv_shrink)
    got = torch.zeros(T, R)
    ref.sgmv_shrink(t["x_in"], t["a"], got, None, seq_len, seq_idx, 3, T - 9, T, 1.0)
    torch.testing.assert_close(got, want)


def test_tokens_without_adapter_get_nothing(tensors):
    t = tensors
    T = len(t["idx"])
    idx = t["idx"].clone()
    idx[[1, 4, 7]] = -1
    start = torch.randn(T, O)
    got = start.clone()
    cpu_lora.bgmv_expand(t["x_r"], t["b"], got, idx, True)
    torch.testing.assert_close(got[[1, 4, 7]], start[[1, 4, 7]])  # untouched
    keep = idx >= 0
    want = start[keep] + torch.einsum("bi,boi->bo", t["x_r"][keep], t["b"][idx[keep]])
    torch.testing.assert_close(got[keep], want)


def test_bf16_weights_as_vllm_serves_them(tensors):
    """On CPU vLLM keeps LoRA weights in bf16 and shrinks into an fp32 buffer: computing in bf16
    (the inputs converted, not the weight stack) stays within bf16 rounding of vLLM's result."""
    t = tensors
    T = len(t["idx"])
    a = t["a"].to(torch.bfloat16)
    x = t["x_in"].to(torch.bfloat16)
    want, got = torch.zeros(T, R), torch.zeros(T, R)
    ref.bgmv_shrink(x, a, want, t["idx"], 1.0)
    cpu_lora.bgmv_shrink(x, a, got, t["idx"], 1.0)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=5e-2)
    assert got.dtype == torch.float32


def test_one_index_for_all_rows_and_a_mismatch(tensors):
    t = tensors
    out = cpu_lora.lora_matmul(t["x_in"], t["a"], torch.tensor([2]), torch.float32)
    torch.testing.assert_close(out, t["x_in"] @ t["a"][2, 0].T)
    with pytest.raises(ValueError, match="indices"):
        cpu_lora.lora_matmul(t["x_in"], t["a"], torch.tensor([0, 1]), torch.float32)


def test_install_patches_the_cpu_punica_wrapper(monkeypatch):
    import vllm.lora.ops.torch_ops as pkg
    from vllm.lora.punica_wrapper import punica_cpu

    for mod in (ref, punica_cpu, pkg):
        for name in cpu_lora._OPS:
            monkeypatch.setattr(mod, name, getattr(mod, name))  # restored after the test
    cls = punica_cpu.PunicaWrapperCPU
    for name in ("add_lora_linear", "add_lora_logits"):
        monkeypatch.setattr(cls, name, getattr(cls, name))
    report = cpu_lora.install()
    assert report and report.missing == [] and report.vllm == cpu_lora.WRITTEN_FOR
    assert punica_cpu.bgmv_expand is cpu_lora.bgmv_expand
    assert ref.bgmv_shrink is cpu_lora.bgmv_shrink
    assert cls.add_lora_linear is cpu_lora.add_lora_linear
    assert cls.add_lora_logits is cpu_lora.add_lora_logits
    assert cpu_lora._STOCK_ADD_LORA_LINEAR is not cpu_lora.add_lora_linear


def test_a_renamed_or_reshaped_vllm_op_is_reported_not_patched_blind(monkeypatch, tmp_path, caplog):
    import vllm.lora.ops.torch_ops as pkg
    from vllm.lora.punica_wrapper import punica_cpu

    for mod in (ref, punica_cpu, pkg):
        for name in cpu_lora._OPS:
            monkeypatch.setattr(mod, name, getattr(mod, name))
    cls = punica_cpu.PunicaWrapperCPU
    monkeypatch.delattr(punica_cpu, "bgmv_expand_slice")  # as if vLLM had renamed it
    monkeypatch.setattr(cls, "add_lora_logits", lambda self, y, x, lora_stacked, scale: None)

    def reshaped(inputs, output_tensor, lora_b_weights, lora_indices_tensor, add_inputs=True):
        pass

    monkeypatch.setattr(punica_cpu, "bgmv_expand", reshaped)
    monkeypatch.setattr(cls, "add_lora_linear", getattr(cls, "add_lora_linear"))
    monkeypatch.setenv("BAKEHOUSE_CPU_LORA_REPORT", str(tmp_path))
    with caplog.at_level("WARNING"):
        report = cpu_lora.install()
    assert not report
    assert sorted(m.split(":")[0] for m in report.missing) == [
        "PunicaWrapperCPU.add_lora_logits", "punica_cpu.bgmv_expand", "punica_cpu.bgmv_expand_slice"]
    assert "punica_cpu.bgmv_expand_slice: not found" in report.missing
    assert punica_cpu.bgmv_expand is reshaped  # left alone
    assert cls.add_lora_linear is cpu_lora.add_lora_linear  # what fits is still replaced
    assert "NOT fully installed" in caplog.text
    from serving.engine import read_reports

    (written,) = read_reports(tmp_path)
    assert written["pid"] == os.getpid() and not written["active"] and written["missing"] == report.missing


# -- whole LoRA layers: one shrink for all slices, the rank in use, float32 --------------------------


def wrapper(idx):
    """vLLM's CPU punica wrapper with `idx` as the token (and sequence) adapter indices."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    w = PunicaWrapperCPU(512, 16, "cpu")
    n = len(idx)
    w._token_lora_indices[:n] = torch.tensor(idx)
    w._sampler_indices[:n] = torch.tensor(idx)
    w.indices_len[:] = [n, n, n, n]
    return w


def layer(slots=SLOTS, slices=(40, 16, 16), rmax=8, ranks=(4, 0, 8, 2), dtype=torch.bfloat16, seed=0):
    """vLLM-shaped stacks of a fused layer (e.g. qkv): per slice A [slots, 1, rmax, I] and
    B [slots, 1, out, rmax], zero beyond each slot's adapter rank (`ranks`; 0 = empty slot)."""
    g = torch.Generator().manual_seed(seed)
    a_st, b_st = [], []
    for out in slices:
        a, b = torch.zeros(slots, 1, rmax, I, dtype=dtype), torch.zeros(slots, 1, out, rmax, dtype=dtype)
        for s, r in enumerate(ranks):
            a[s, 0, :r] = torch.randn(r, I, generator=g).to(dtype)
            b[s, 0, :, :r] = torch.randn(out, r, generator=g).to(dtype)
        a_st.append(a)
        b_st.append(b)
    return tuple(a_st), tuple(b_st)


def reference(y, x, a_st, b_st, idx, scale=1.0):
    y = y.double().clone()
    col = 0
    for a, b in zip(a_st, b_st):
        out = b.shape[2]
        for t, s in enumerate(idx):
            if s >= 0:
                y[t, col: col + out] += scale * (b[s, 0].double() @ (a[s, 0].double() @ x[t].double()))
        col += out
    return y


@pytest.mark.parametrize("rows", [13, 200], ids=["decode-rows", "prefill-rows"])
def test_add_lora_linear_matches_the_per_token_formula(rows):
    a_st, b_st = layer()
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(-1, SLOTS, (rows,), generator=g).tolist()
    x = torch.randn(rows, I, generator=g).to(torch.bfloat16)
    y = torch.randn(rows, 72 + 5, generator=g).to(torch.bfloat16)  # wider than the slices
    want = reference(y, x, a_st, b_st, idx, scale=0.5)
    assert cpu_lora.add_lora_linear(wrapper(idx), y, x, a_st, b_st, 0.5, (40, 16, 16)) is None
    torch.testing.assert_close(y.double(), want, rtol=2e-2, atol=6e-2)  # y is bf16
    assert torch.equal(y[:, 72:].double(), want[:, 72:])  # columns past the slices untouched


def test_add_lora_linear_sees_a_slot_rewritten_in_place():
    """The float32 copy is cached per layer; vLLM loads an adapter by copying into its slot in
    place (version counter moves), and the next step must compute with the new weights."""
    a_st, b_st = layer(dtype=torch.float32)
    idx = [1, 1, 0]
    x, y0 = torch.randn(3, I), torch.zeros(3, 72)
    w = wrapper(idx)
    y = y0.clone()
    cpu_lora.add_lora_linear(w, y, x, a_st, b_st, 1.0, (40, 16, 16))
    torch.testing.assert_close(y[:2], torch.zeros(2, 72))  # slot 1 is empty
    for a, b in zip(a_st, b_st):  # as vLLM's set_lora does: copy_ into the slot's view
        a[1, 0, :8].copy_(torch.randn(8, I))
        b[1, 0, :, :8].copy_(torch.randn(b.shape[2], 8))
    y = y0.clone()
    cpu_lora.add_lora_linear(w, y, x, a_st, b_st, 1.0, (40, 16, 16))
    torch.testing.assert_close(y.double(), reference(y0, x, a_st, b_st, idx), rtol=1e-4, atol=1e-4)
    assert y[:2].abs().sum() > 0


def test_a_layer_no_adapter_touches_is_skipped_and_no_lora_is_a_no_op():
    a_st, b_st = layer(ranks=(0, 0, 0, 0))
    y = torch.randn(4, 72).to(torch.bfloat16)
    before = y.clone()
    cpu_lora.add_lora_linear(wrapper([0, 1, 2, 3]), y, torch.randn(4, I).to(torch.bfloat16), a_st, b_st,
                             1.0, (40, 16, 16))
    assert torch.equal(y, before)
    a_st, b_st = layer()
    w = wrapper([0, 1, 2, 3])
    w.no_lora = True
    cpu_lora.add_lora_linear(w, y, torch.randn(4, I).to(torch.bfloat16), a_st, b_st, 1.0, (40, 16, 16))
    assert torch.equal(y, before)


def test_an_unknown_layout_goes_to_vllms_own_op(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_lora, "_STOCK_ADD_LORA_LINEAR", lambda *a, **k: calls.append(a))
    a_st, b_st = layer()
    w = wrapper([0, 1])  # two indices for three rows
    cpu_lora.add_lora_linear(w, torch.zeros(3, 72), torch.randn(3, I), a_st, b_st, 1.0, (40, 16, 16))
    assert len(calls) == 1


def test_add_lora_logits_skips_an_untouched_head_and_applies_a_real_one():
    vocab = 50
    idx = [2, -1, 0]
    x = torch.randn(3, I)
    a_st, b_st = layer(slices=(vocab,), ranks=(0, 0, 0, 0), dtype=torch.float32)
    y = torch.randn(3, vocab)
    before = y.clone()
    cpu_lora.add_lora_logits(wrapper(idx), y, x, a_st[0], b_st[0], 1.0)
    assert torch.equal(y, before)
    a_st, b_st = layer(slices=(vocab,), dtype=torch.float32, seed=5)
    cpu_lora.add_lora_logits(wrapper(idx), y, x, a_st[0], b_st[0], 2.0)
    torch.testing.assert_close(y.double(), reference(before, x, a_st, b_st, idx, 2.0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("idx", [[3, 3, 0, 3, -1], [-1, -1], [1, -1, 1], [2, 2, 2]])
def test_uneven_groups_gaps_and_rows_without_adapter(idx):
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(SLOTS, O, R, generator=g), torch.randn(len(idx), R, generator=g)
    got = cpu_lora.lora_matmul(x, w, torch.tensor(idx), torch.float32)
    want = torch.stack([w[i] @ row if i >= 0 else torch.zeros(O) for i, row in zip(idx, x)])
    torch.testing.assert_close(got, want)


def test_engine_starts_the_patched_server_unless_told_not_to(tmp_path):
    from serving.config import ServeConfig
    from serving.engine import Engine

    cmd = Engine(ServeConfig(model_dir=tmp_path), tmp_path / "log").command()
    assert cmd[1:3] == ["-m", "serving.cpu_lora"] and "--enable-lora" in cmd
    assert cmd[cmd.index("--dtype") + 1] in ("bfloat16", "float32")  # "auto" is resolved for vLLM
    bf16 = Engine(ServeConfig(model_dir=tmp_path, dtype="bfloat16"), tmp_path / "log").command()
    assert bf16[bf16.index("--dtype") + 1] == "bfloat16"
    with pytest.raises(ValueError, match="dtype"):
        ServeConfig(model_dir=tmp_path, dtype="int8")
    stock = Engine(ServeConfig(model_dir=tmp_path, grouped_lora_ops=False), tmp_path / "log").command()
    assert stock[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]


def test_engine_binds_its_threads_to_every_cpu_of_a_small_machine(tmp_path, monkeypatch):
    from serving import engine
    from serving.config import ServeConfig

    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: {0, 1})
    env = engine.Engine(ServeConfig(model_dir=tmp_path), tmp_path / "log").environment()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0,1" and env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: set(range(64)))
    env = engine.Engine(ServeConfig(model_dir=tmp_path), tmp_path / "log").environment()
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env  # big machine: vLLM's own auto binding
    env = engine.Engine(ServeConfig(model_dir=tmp_path, cpu_threads_bind="2-5"), tmp_path / "log").environment()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "2-5"
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # the user's environment wins
    env = engine.Engine(ServeConfig(model_dir=tmp_path, cpu_threads_bind="2-5"), tmp_path / "log").environment()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"


def test_plans_of_equal_bytes_but_other_dtypes_are_not_confused():
    from serving.cpu_lora import _plan

    one = _plan(torch.tensor([-1], dtype=torch.int64))  # the same 8 bytes as int32 [-1, -1]
    two = _plan(torch.tensor([-1, -1], dtype=torch.int32))
    assert len(one.none) == 1 and len(two.none) == 2
