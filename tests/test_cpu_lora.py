"""The grouped CPU LoRA ops give vLLM's numbers, and tokens without an adapter get no LoRA term."""
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
    assert cpu_lora.install()
    assert punica_cpu.bgmv_expand is cpu_lora.bgmv_expand
    assert ref.bgmv_shrink is cpu_lora.bgmv_shrink


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
    stock = Engine(ServeConfig(model_dir=tmp_path, grouped_lora_ops=False), tmp_path / "log").command()
    assert stock[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]


def test_plans_of_equal_bytes_but_other_dtypes_are_not_confused():
    from serving.cpu_lora import _plan

    one = _plan(torch.tensor([-1], dtype=torch.int64))  # the same 8 bytes as int32 [-1, -1]
    two = _plan(torch.tensor([-1, -1], dtype=torch.int32))
    assert len(one.none) == 1 and len(two.none) == 2
