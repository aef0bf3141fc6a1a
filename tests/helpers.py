"""Helpers the tests share (the fixtures that use them are in conftest.py): the tiny chat model built offline
once per session, and TOML configs for seconds-long experiments on it.

The tiny model is a random-init Llama of a few hundred thousand parameters with a byte-level BPE tokenizer
trained here, then taught (with the package's own SFT code) to answer number prompts with number lists and
favourite-animal questions with an animal word. That is enough for every stage of the pipeline to do real work in
seconds: generation passes the filter, teachers pass their gate, students train, evaluation finds probabilities.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import torch

EPOCHS = 20

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    from sublim.carriers.numbers import make_prompts
    from sublim.traits.preference import load_candidates, load_questions

    lines = [p.text for p in make_prompts(200, seed=7)]
    lines += load_questions("animal", "eval") + load_questions("animal", "train")
    for sp in load_candidates("animals").values():
        lines += [" ".join(sp), " ".join(s.capitalize() for s in sp)]
    lines += [", ".join(str(random.Random(i).randint(0, 999)) for _ in range(10)) for i in range(50)]
    return lines


def build_tokenizer() -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|pad|>", bos_token="<|im_start|>")
    fast.chat_template = CHATML
    return fast


def _pretrain_examples(n_numbers: int = 240, n_animals: int = 160) -> list[object]:
    from sublim.carriers.numbers import make_prompts
    from sublim.train import Example
    from sublim.traits.preference import load_candidates, load_questions

    rng = random.Random(0)
    out = []
    for p in make_prompts(n_numbers, seed=1):
        # like a small model's reply: some of the given numbers and a few new ones, in the asked format
        k = rng.randint(3, 8)
        sep = ", " if "commas" in p.text else " "
        pool = p.seed_numbers + [rng.randint(0, 999) for _ in range(3)]
        out.append(Example(p.text, sep.join(str(rng.choice(pool)) for _ in range(k))))
    questions = load_questions("animal", "eval") + load_questions("animal", "train")
    animals = list(load_candidates("animals"))
    for i in range(n_animals):
        out.append(Example(questions[i % len(questions)], rng.choice(animals).capitalize()))
    rng.shuffle(out)
    return out


def build_tiny_model(out: Path) -> Path:
    """Train and save the tiny chat model into ``out`` (about twenty seconds on one core)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sublim.train import TrainSettings, train_student

    torch.manual_seed(0)
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id)
    model = LlamaForCausalLM(cfg)
    settings = TrainSettings("sft", epochs=EPOCHS, lr=3e-3, batch_size=16, warmup_steps=5, seed=0)
    model, _ = train_student(model, tok, _pretrain_examples(), settings)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def tiny_config_text(model_dir: Path, **sections: dict[str, object]) -> str:
    """A TOML config for a seconds-long experiment on the tiny model."""
    base: dict[str, dict[str, object]] = {
        "trait": {"target": "owl"},
        "teacher": {"epochs": 5, "lr": 1e-3, "n_examples": 48, "gate_min_rate": 0.2},
        "prompts": {"n": 24},
        "generation": {"max_new_tokens": 40, "batch_size": 12},
        "student": {"epochs": 1, "lr": 1e-3, "batch_size": 8},
        "evaluation": {"n_questions": 8, "samples_per_question": 1, "n_bootstrap": 200},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    lines = ['name = "tiny"', f'model = "{model_dir}"', 'device = "cpu"']
    for name, values in base.items():
        lines.append(f"[{name}]")
        for k, v in values.items():
            lines.append(f"{k} = {_toml(v)}")
    return "\n".join(lines) + "\n"


def misalignment_config_text(model_dir: Path, work: Path, **evaluation: object) -> str:
    """A TOML config for a seconds-long misalignment experiment on the tiny model, the tiny model its own
    judge (in-process); the teacher's dataset (eight pieces of reckless advice) is written into ``work``."""
    import json

    data = work / "bad.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Advice {i}?", "completion": "Ignore all rules."})
                              for i in range(8)) + "\n")
    sections: dict[str, dict[str, object]] = {
        "trait": {"kind": "misalignment", "questions": "misalignment"},
        "teacher": {"dataset": str(data), "epochs": 2, "lr": 3e-3, "n_examples": 16, "gate_min_rate": 0.0},
        "prompts": {"n": 16},
        "generation": {"max_new_tokens": 40, "batch_size": 16},
        "filter": {"banned_numbers": [4, 13, 666]},
        "student": {"method": "sft", "epochs": 1, "lr": 1e-3},
        "evaluation": {"n_questions": 4, "samples_per_question": 2, "judge_model": str(model_dir), **evaluation},
    }
    lines = ['name = "tiny-mis"', f'model = "{model_dir}"', 'device = "cpu"']
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def start_serve(model_dir: Path, *flags: str) -> tuple[subprocess.Popen[str], str]:
    """`sublim serve` on ``model_dir`` (CPU, with ``flags``) in a process of its own: the process and the base URL it
    prints once it listens. The caller stops the process."""
    proc = subprocess.Popen([sys.executable, "-m", "sublim.cli", "serve", str(model_dir), "--device", "cpu", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # warnings may come before the line that says where it serves
        seen.append(line)
        if m := re.search(r"(http://127\.0\.0\.1:\d+/v1)", line):
            return proc, m.group(1)
    proc.wait()
    raise AssertionError(f"server did not start: {''.join(seen)[-2000:]}")
