"""Token ids of chat contexts. Teacher and student differ only in the system slot: the teacher sees
the prompt as its system message, the student none (the template's default, as in serving)."""
from __future__ import annotations


def chat_ids(tokenizer, user: str, system: str | None = None) -> list[int]:
    """Token ids of [system?, user] + the assistant header, ready for generation."""
    messages = [{"role": "user", "content": user}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_ids(tokenizer) -> set[int]:
    """Token ids that end an assistant turn (EOS and the chat end-of-turn token)."""
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return {i for i in ids if i is not None}
