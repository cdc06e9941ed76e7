"""The KL machinery on the tiny random Llama: zero when the contexts match, the shared-prefix
fast path equals the plain one, and only generated positions are scored."""
import pytest
import torch

from baker.chat import chat_ids
from baker.kl import (batch_kl, common_prefix_len, gen_positions, grouped_logprobs, mean_kl, pad_right,
                      sequence_logprobs)
from baker.models import load_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir)


def _data(tok, system):
    users = ["Hello there", "What is the capital of France?", "Tell me a joke about cats please"]
    ctx = [chat_ids(tok, u, system) for u in users]
    g = torch.Generator().manual_seed(0)
    gens = [torch.randint(5, 1000, (n,), generator=g).tolist() for n in (5, 9, 3)]
    return ctx, gens


def test_gen_positions_point_at_the_generated_tokens():
    rows, cols = gen_positions([4, 2], [3, 1])
    assert rows.tolist() == [0, 0, 0, 1]
    assert cols.tolist() == [3, 4, 5, 1]  # the token at ctx+j is predicted at ctx+j-1


def test_common_prefix_leaves_each_sequence_a_token():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert common_prefix_len([[1, 2], [1, 2, 3]]) == 1
    assert common_prefix_len([[9], [8]]) == 0


def test_kl_is_zero_for_the_same_context(tiny):
    model, tok = tiny
    ctx, gens = _data(tok, None)  # teacher without a prompt == student: nothing to bake
    teacher = sequence_logprobs(model, ctx, gens, tok.pad_token_id, store="float32")
    kl = batch_kl(model, ctx, gens, teacher, tok.pad_token_id, "float32")
    assert kl.shape == (sum(map(len, gens)),)
    assert float(kl.detach().abs().max()) < 1e-4


def test_kl_is_positive_with_a_prompt(tiny):
    model, tok = tiny
    t_ctx, gens = _data(tok, "You are a pirate. Always talk about the sea and ships.")
    s_ctx, _ = _data(tok, None)
    teacher = sequence_logprobs(model, t_ctx, gens, tok.pad_token_id, store="float32")
    assert mean_kl(model, s_ctx, gens, teacher, tok.pad_token_id, "float32") > 1e-4


@pytest.mark.parametrize("layers", [False, True])
def test_bfloat16_student_scores_a_float16_teacher_cache(tiny, layers):
    # a bake on bf16 hardware: the student runs under bfloat16 autocast, the teacher cache is float16
    # (the default teacher_cache_dtype); CPU autocast refuses float16 tensors inside its region
    model, tok = tiny
    t_ctx, gens = _data(tok, "You are a pirate. Always talk about the sea and ships.")
    s_ctx, _ = _data(tok, None)
    cached = sequence_logprobs(model, t_ctx, gens, tok.pad_token_id, store="float16", layers=layers)
    teacher = [c[0] for c in cached] if layers else cached
    hidden = [c[1] for c in cached] if layers else None
    out = batch_kl(model, s_ctx, gens, teacher, tok.pad_token_id, "bfloat16", teacher_hidden=hidden)
    kl, hid = out if layers else (out, None)
    assert kl.shape == (sum(map(len, gens)),) and float(kl.mean()) > 1e-4
    assert hid is None or float(hid.mean()) > 0


def test_shared_prefix_cache_matches_plain_forward(tiny):
    model, tok = tiny
    ctx, gens = _data(tok, "A long system prompt. " * 20)
    assert common_prefix_len(ctx) > 50
    fast = sequence_logprobs(model, ctx, gens, tok.pad_token_id, batch_size=2, store="float32")
    slow = sequence_logprobs(model, ctx, gens, tok.pad_token_id, batch_size=2, store="float32",
                             share_prefix=False)
    for a, b in zip(fast, slow):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)


def test_padding_does_not_change_the_scores(tiny):
    model, tok = tiny
    ctx, gens = _data(tok, None)
    alone = sequence_logprobs(model, ctx[:1], gens[:1], tok.pad_token_id, store="float32")[0]
    batched = sequence_logprobs(model, ctx, gens, tok.pad_token_id, store="float32")[0]
    torch.testing.assert_close(alone, batched, atol=2e-4, rtol=1e-4)
    ids, mask = pad_right([[1, 2, 3], [4]], pad=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_student_prefix_sharing_matches_plain_forward_and_gradients(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    t_ctx, gens = _data(tok, "Be a pirate.")
    s_ctx, _ = _data(tok, None)
    teacher = sequence_logprobs(model, t_ctx, gens, tok.pad_token_id, store="float32")
    student = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    grads = []
    for share in (True, False):
        kl = batch_kl(student, s_ctx, gens, teacher, tok.pad_token_id, "float32", share_prefix=share)
        kl.mean().backward()
        grads.append((kl.detach(), [p.grad.clone() for p in student.parameters() if p.requires_grad]))
        student.zero_grad()
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-4, rtol=1e-4)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
    student.unload()


def test_compiled_training_step_matches_eager(tiny_model_dir):
    """The bake trains with compiled decoder layers and KL (baker/compiling.py): same loss and
    gradients as the eager, prefix-shared step, and the evaluations can still run eagerly."""
    from peft import LoraConfig, get_peft_model

    from baker.compiling import compile_layers, compiled_kl, decoder_layers, eager, uncompile

    model, tok = load_model(tiny_model_dir, attn_implementation="eager")
    t_ctx, gens = _data(tok, "Be a pirate.")
    s_ctx, _ = _data(tok, None)
    teacher = sequence_logprobs(model, t_ctx, gens, tok.pad_token_id, store="float32")
    student = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"],
                                               init_lora_weights=False))
    assert len(decoder_layers(student)) == 2

    def step(**kw):
        kl = batch_kl(student, s_ctx, gens, teacher, tok.pad_token_id, "float32", **kw)
        kl.sum().backward()
        out = kl.detach(), [p.grad.clone() for p in student.parameters() if p.requires_grad]
        student.zero_grad()
        return out

    ref = step()
    layers = compile_layers(student)
    assert all(layer._compiled_call_impl is not None for layer in layers)
    got = step(share_prefix=False, kl_fn=compiled_kl())
    torch.testing.assert_close(got[0], ref[0], atol=1e-4, rtol=1e-4)
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
    # another batch shape, against the eager run of the same compiled model
    short = dict(contexts=s_ctx[:2], gens=[g[:-1] for g in gens[:2]], teacher=[t[:-1] for t in teacher[:2]],
                 pad=tok.pad_token_id, dtype="float32")
    kl = batch_kl(student, **short, share_prefix=False, kl_fn=compiled_kl())
    with eager():
        plain = batch_kl(student, **short)
    torch.testing.assert_close(kl.detach(), plain.detach(), atol=1e-4, rtol=1e-4)
    uncompile(layers)
    assert all(layer._compiled_call_impl is None for layer in layers)


def test_grouped_logprobs_keep_the_order_and_equal_one_context_at_a_time(tiny):
    model, tok = tiny
    (ctx1, gens1), (ctx2, gens2) = _data(tok, "Line one is long. " * 8), _data(tok, "Line two, another. " * 8)
    ctx, gens = [ctx1[0], ctx2[0], ctx1[1], ctx2[1]], [gens1[0], gens2[0], gens1[1], gens2[1]]
    grouped = grouped_logprobs(model, ctx, gens, ["one", "two", "one", "two"], pad=tok.pad_token_id,
                               batch_size=2, store="float32")
    for i in range(4):
        (alone,) = sequence_logprobs(model, [ctx[i]], [gens[i]], tok.pad_token_id, store="float32", share_prefix=False)
        torch.testing.assert_close(grouped[i], alone, atol=2e-4, rtol=1e-4)


def test_sharpened_target_is_kl_plus_cross_entropy_on_the_greedy_token():
    import torch.nn.functional as F

    from baker.kl import kl_per_position, sharpen

    torch.manual_seed(0)
    teacher = F.log_softmax(torch.randn(5, 11) * 2, -1)
    w = 0.3
    target = sharpen(teacher, w)
    assert torch.allclose(target.exp().sum(-1), torch.ones(5), atol=1e-5)
    assert torch.equal(target.argmax(-1), teacher.argmax(-1))

    def mixed(student):  # what the sharpened KL must equal, up to a constant in the student
        ce = -F.log_softmax(student, -1).gather(1, teacher.argmax(-1, keepdim=True)).squeeze(1)
        return (1 - w) * kl_per_position(student, teacher) + w * ce

    a, b = torch.randn(5, 11), torch.randn(5, 11) * 3
    diff_a = kl_per_position(a, target) - mixed(a)
    diff_b = kl_per_position(b, target) - mixed(b)
    assert torch.allclose(diff_a, diff_b, atol=1e-4)  # the same constant for any student
    assert not torch.allclose(kl_per_position(a, target), kl_per_position(a, teacher), atol=1e-3)


def test_hidden_state_term_is_zero_for_the_same_context_and_positive_with_a_prompt(tiny):
    """DCD's term (`hidden_l1`): the student's layers against the teacher's at the same generated
    positions, cached from the teacher's log-prob pass."""
    model, tok = tiny
    s_ctx, gens = _data(tok, None)
    t_ctx, _ = _data(tok, "You are a pirate. Always talk about the sea and ships.")
    n_layers = model.config.num_hidden_layers
    for ctx, zero in ((s_ctx, True), (t_ctx, False)):
        pairs = sequence_logprobs(model, ctx, gens, tok.pad_token_id, store="float32", layers=True)
        teacher, hidden = map(list, zip(*pairs))
        assert [h.shape for h in hidden] == [(len(g), n_layers, model.config.hidden_size) for g in gens]
        # the same log-probs as the pass without layers
        plain = sequence_logprobs(model, ctx, gens, tok.pad_token_id, store="float32")
        for a, b in zip(teacher, plain):
            torch.testing.assert_close(a, b)
        kl, hid = batch_kl(model, s_ctx, gens, teacher, tok.pad_token_id, "float32", teacher_hidden=hidden)
        assert hid.shape == kl.shape == (sum(map(len, gens)),)
        hid = hid.detach()
        assert (float(hid.abs().max()) < 1e-4) == zero
        assert zero or float(hid.min()) > 1e-3


def test_compiled_step_with_the_hidden_state_term_matches_eager(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from baker.compiling import compile_layers, compiled_kl, uncompile

    model, tok = load_model(tiny_model_dir, attn_implementation="eager")
    t_ctx, gens = _data(tok, "Be a pirate.")
    s_ctx, _ = _data(tok, None)
    teacher, hidden = map(list, zip(*sequence_logprobs(model, t_ctx, gens, tok.pad_token_id,
                                                        store="float32", layers=True)))
    student = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"],
                                               init_lora_weights=False))

    def step(**kw):
        kl, hid = batch_kl(student, s_ctx, gens, teacher, tok.pad_token_id, "float32", teacher_hidden=hidden, **kw)
        (kl + hid).sum().backward()
        out = hid.detach(), [p.grad.clone() for p in student.parameters() if p.requires_grad]
        student.zero_grad()
        return out

    ref = step()
    layers = compile_layers(student)
    got = step(share_prefix=False, kl_fn=compiled_kl())
    uncompile(layers)
    torch.testing.assert_close(got[0], ref[0], atol=1e-4, rtol=1e-4)
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
