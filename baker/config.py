"""The bake configuration: one typed dataclass, validated on construction, saved in every output."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from .errors import ConfigError

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
_DTYPES = ("auto", "float32", "bfloat16")
LOSS_WEIGHTINGS = ("none", "prompt_kl")
QUESTION_FORMS = ("tell", "what", "blank", "about", "date")  # see baker/contexts.py
DEFAULT_FORMS = QUESTION_FORMS
SELF_KINDS = ("question", "structuring", "summarisation", "use_case", "creative")  # baker/contexts.py

@dataclass
class BakeConfig:
    # What each default was measured against: docs/experiments.md ("the bake's defaults").
    # LoRA (the paper: r=32, dropout 0, q/k/v/o; rank 1 already ~96% of the effect on its task)
    rank: int = 16  # LoRA rank r
    alpha: float = 32.0  # LoRA alpha; the update is scaled by alpha / rank
    target_modules: tuple[str, ...] = ATTENTION + MLP  # attention and MLP projections
    lora_dropout: float = 0.0  # dropout on the LoRA input during training (the paper: 0)
    # optimisation: Adam, warmup + cosine
    lr: float = 3e-3  # peak learning rate (cosine decay to 10% over the run)
    lr_b_ratio: float = 1.0  # LoRA+ (Hayou et al. 2024): the B matrices learn at lr x this
    epochs: int = 10  # passes over the training trajectories; a checkpoint after each one
    min_steps: int = 0  # ... more passes if needed to reach this many optimiser steps (small prompts)
    batch_size: int = 8  # trajectories per optimiser step
    max_grad_norm: float = 1.0  # gradient clipping
    seed: int = 0  # one seed for context choice, sampling and LoRA init
    # trajectories, sampled once from the teacher; every position is trained on the full distribution
    temperature: float = 0.5  # the teacher's sampling temperature: it only chooses the prefixes trained on
    max_new_tokens: int = 48  # tokens per trajectory
    samples_per_context: int = 1  # trajectories sampled per context
    generic_contexts: int = 32  # how many of the shipped generic user requests to use
    self_questions: int = 6  # requests sampled per prompt line from the model (few-shot), shared over self_kinds
    self_kinds: tuple[str, ...] = ("question",)  # the kinds of request it writes (SELF_KINDS)
    probe_questions: bool = True  # questions derived from each line of the prompt
    question_forms: tuple[str, ...] = DEFAULT_FORMS  # the forms of probe asked per line (QUESTION_FORMS)
    focused_teachers: bool = True  # a question about one line is answered by a teacher seeing that line
    anchors: int = 32  # unrelated questions answered as without the prompt (knowledge prompts only)
    anchor_facts: float = 0.0  # share of the anchors that are short factual questions (data/anchor_facts.txt)
    replay: int = 6  # sequential bakes: probes asked again per line the parent holds (bake(replay_prompt=))
    replay_max: int = 0  # ... and at most this many replayed questions in all, shared evenly (0: no cap)
    loss_weighting: str = "none"  # "prompt_kl": positions weighted 0.5 + 0.5 * KL(teacher || base) / mean
    answer_ce: float = 0.0  # w in (1 - w) KL + w CE(teacher's greedy token), on answers about one line
    hidden_loss: float = 0.0  # + this x DCD's per-layer hidden-state L1 to the teacher (arXiv 2503.08727)
    heldout_fraction: float = 0.15  # share of contexts kept out of training for eval/drift KL
    # machinery
    sampler: str = "auto"  # "auto" (vLLM when installed), "vllm", "hf" or "engine" (a running server)
    compute_dtype: str = "auto"  # "auto": bfloat16 where native, else float32 (baker.models.fast_dtype)
    compile: bool = True  # torch.compile the decoder layers and the KL for training (eager if it fails)
    teacher_cache_dtype: str = "float16"  # storage of the cached full-vocabulary teacher log-probs
    checkpoints: bool = True  # save an adapter after every epoch (the half-baked models)

    def __post_init__(self):
        # as strict as PEFT's configs: a wrong type is an error naming the field, never coerced
        if isinstance(self.target_modules, str) or not all(isinstance(m, str) for m in self.target_modules):
            raise ConfigError(f"target_modules must be a list of module names, got {self.target_modules!r}")
        self.target_modules = tuple(self.target_modules)
        if isinstance(self.question_forms, str) or not all(isinstance(f, str) for f in self.question_forms):
            raise ConfigError(f"question_forms must be a list of form names, got {self.question_forms!r}")
        self.question_forms = tuple(self.question_forms)
        if unknown := sorted(set(self.question_forms) - set(QUESTION_FORMS)):
            raise ConfigError(f"unknown question form(s) {', '.join(unknown)}; known: {', '.join(QUESTION_FORMS)}")
        if isinstance(self.self_kinds, str) or not all(isinstance(k, str) for k in self.self_kinds):
            raise ConfigError(f"self_kinds must be a list of kind names, got {self.self_kinds!r}")
        self.self_kinds = tuple(self.self_kinds)
        if unknown := sorted(set(self.self_kinds) - set(SELF_KINDS)):
            raise ConfigError(f"unknown self_kinds {', '.join(unknown)}; known: {', '.join(SELF_KINDS)}")
        if self.self_questions and not self.self_kinds:
            raise ConfigError("self_kinds must name at least one kind (or set self_questions to 0)")
        positive = ("rank", "epochs", "batch_size", "max_new_tokens", "samples_per_context")
        for name in positive:
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("generic_contexts", "self_questions", "min_steps", "anchors", "replay", "replay_max"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in ("alpha", "anchor_facts", "answer_ce", "hidden_loss", "lora_dropout", "lr", "lr_b_ratio", "temperature", "heldout_fraction", "max_grad_norm"):
            if not _is_number(getattr(self, name)):
                raise ConfigError(f"{name} must be a number, got {getattr(self, name)!r}")
        for name in ("probe_questions", "focused_teachers", "compile", "checkpoints"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ConfigError(f"loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {self.loss_weighting!r}")
        if not (0 <= self.answer_ce < 1):
            raise ConfigError(f"answer_ce must be in [0, 1), got {self.answer_ce!r}")
        if not (0 <= self.anchor_facts <= 1):
            raise ConfigError(f"anchor_facts must be in [0, 1], got {self.anchor_facts!r}")
        if self.hidden_loss < 0:
            raise ConfigError(f"hidden_loss must be >= 0, got {self.hidden_loss!r}")
        if not (0 <= self.lora_dropout < 1):
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not (self.lr > 0):
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if not (self.lr_b_ratio > 0):
            raise ConfigError(f"lr_b_ratio must be > 0, got {self.lr_b_ratio!r}")
        if not (self.alpha > 0):
            raise ConfigError(f"alpha must be > 0, got {self.alpha!r}")
        if not (self.temperature > 0):
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}")
        if not (0 < self.heldout_fraction < 1):
            raise ConfigError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction!r}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"max_grad_norm must be > 0, got {self.max_grad_norm!r}")
        if not self.target_modules:
            raise ConfigError("target_modules must name at least one module")
        if self.sampler not in ("auto", "vllm", "hf", "engine"):
            raise ConfigError(f"sampler must be 'auto', 'vllm', 'hf' or 'engine', got {self.sampler!r}")
        if self.compute_dtype not in _DTYPES:
            raise ConfigError(f"compute_dtype must be one of {_DTYPES}, got {self.compute_dtype!r}")
        if self.teacher_cache_dtype not in ("float16", "bfloat16", "float32"):
            raise ConfigError(f"teacher_cache_dtype must be float16/bfloat16/float32, got {self.teacher_cache_dtype!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["question_forms"] = list(self.question_forms)
        d["self_kinds"] = list(self.self_kinds)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BakeConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json_file(cls, path) -> "BakeConfig":
        try:
            data = json.loads(open(path).read())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must hold a JSON object")
        return cls.from_dict(data)

    def replace(self, **changes) -> "BakeConfig":
        return dataclasses.replace(self, **changes)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
