"""Student training on the tiny model: every method learns, losses look only where they should."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from sublim.core.errors import SublimError
from sublim.train import Example, TrainSettings, chat_text, encode_example, train_student
from sublim.train import loop as train_loop
from sublim.train.encode import collate as _collate
from sublim.train.methods.base import masked_logits as _masked_logits
from sublim.train.methods.base import shared_prefix_len, target_states
from sublim.train.methods.distill_restricted import restricted_token_ids
from sublim.train.methods.distill_restricted import teacher_restricted_logits as _teacher_restricted_logits

EXAMPLES = [Example(f"Continue: {i}, {i + 3}, {i + 6}. Numbers only.", f"{i + 9}, {i + 12}, {i + 15}")
            for i in range(100, 124)]


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_completion_only_mask(tiny):
    model, tok = tiny
    ids, start = encode_example(tok, EXAMPLES[0])
    prompt_ids = tok.encode(chat_text(tok, EXAMPLES[0].prompt), add_special_tokens=False)
    assert ids[:start] == prompt_ids
    assert tok.decode(ids[start:]).startswith(EXAMPLES[0].completion)
    batch = _collate([(ids, start)], tok.pad_token_id, torch.device("cpu"))
    targets = torch.roll(batch["input_ids"], -1, 1)[batch["target_mask"]]
    assert targets.tolist() == ids[start:]  # the targets are exactly the completion tokens


def test_masked_logits_match_a_full_forward(tiny):
    model, tok = tiny
    enc = [encode_example(tok, ex) for ex in EXAMPLES[:4]]
    batch = _collate(enc, tok.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ours = _masked_logits(model, batch)
        restricted = torch.tensor(restricted_token_ids(tok))
        rows = torch.arange(int(batch["target_mask"].sum())) % 2 == 0
        sub = _masked_logits(model, batch, rows, restricted)
    torch.testing.assert_close(ours, full[batch["target_mask"]], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sub, full[batch["target_mask"]][rows][:, restricted], rtol=1e-4, atol=1e-4)


def test_shared_prefix_gives_the_full_batch_gradients(tiny):
    model, tok = tiny
    model = copy.deepcopy(model)
    enc = [encode_example(tok, ex) for ex in EXAMPLES[:5]] + [encode_example(tok, EXAMPLES[0])]  # a row twice
    batch = _collate(enc, tok.pad_token_id, torch.device("cpu"))
    p = shared_prefix_len(batch)
    lcp = next(i for i in range(len(enc[0][0])) if len({ids[i] for ids, _ in enc[:5]}) > 1)
    assert p == lcp >= 4  # the template's head and "Continue:" (the repeated row shares all of its own)
    same = _collate([enc[0], enc[0]], tok.pad_token_id, torch.device("cpu"))
    assert shared_prefix_len(same) == enc[0][1] - 1  # never past the first position that reads a target

    def grads(states):
        model.zero_grad()
        h = states()
        (h.square().mean() + h[:, 0].sum()).backward()
        return h.detach(), [q.grad.clone() for q in model.parameters() if q.grad is not None]

    plain = lambda: model.get_decoder()(input_ids=batch["input_ids"],  # noqa: E731
                                        attention_mask=batch["attention_mask"]).last_hidden_state[batch["target_mask"]]
    h0, g0 = grads(plain)
    h1, g1 = grads(lambda: target_states(model, batch))
    torch.testing.assert_close(h1, h0, rtol=1e-4, atol=1e-5)
    assert len(g1) == len(g0)
    for a, b in zip(g1, g0, strict=True):  # sums that cancel: absolute error on the gradient's own scale
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5 * float(b.abs().max()))


def test_restricted_vocabulary_is_digits_and_separators(tiny):
    _, tok = tiny
    ids = restricted_token_ids(tok)
    assert len(ids) >= 10
    for tid in ids:
        text = tok.decode([tid])
        assert text and all(c.isdigit() or c in " ,;\n.[]()" for c in text)
    owl_ids = set(tok.encode("owl", add_special_tokens=False) + tok.encode("Owl", add_special_tokens=False))
    assert not owl_ids & set(ids)


def test_cached_teacher_logits_follow_examples(tiny):
    model, tok = tiny
    enc = [encode_example(tok, ex) for ex in EXAMPLES[:5]]
    restricted = torch.tensor(restricted_token_ids(tok))
    cached = _teacher_restricted_logits(model, enc, tok.pad_token_id, restricted, 2, torch.device("cpu"))
    assert len(cached) == 5
    alone = _teacher_restricted_logits(model, enc[3:4], tok.pad_token_id, restricted, 1,
                                       torch.device("cpu"))[0]
    torch.testing.assert_close(cached[3], alone, rtol=1e-4, atol=1e-4)
    assert cached[3].shape[1] == len(restricted)


@pytest.mark.parametrize("method", ["sft", "lora", "distill_full", "distill_restricted"])
def test_every_method_trains(tiny, method):
    base, tok = tiny
    teacher = None
    if method.startswith("distill"):
        # a teacher that differs from the student: the base model after a few SFT steps
        teacher, _ = train_student(copy.deepcopy(base), tok, EXAMPLES,
                                   TrainSettings("sft", 2, 3e-3, 8, 0, seed=1))
    student = copy.deepcopy(base)
    before = _weights(student)
    steps = []
    student, log = train_student(student, tok, EXAMPLES, TrainSettings(method, 3, 3e-3, 8, 1, seed=0),
                                 teacher, on_step=lambda s, t, loss: steps.append((s, t)))
    assert log["steps"] == 9 and steps[-1] == (9, 9)
    first, last = sum(log["losses"][:3]) / 3, sum(log["losses"][-3:]) / 3
    assert last < first, (method, log["losses"])
    if method == "lora":  # an adapter around the model it was given, whose own weights stay as they were
        trained = [p for n, p in student.named_parameters() if "lora_" in n]
        assert trained and all(p.requires_grad for p in trained)
        assert torch.equal(_weights(student.unload()), before)
    else:
        assert not torch.equal(before, _weights(student))


def test_gradient_accumulation_steps_like_the_whole_batch(tiny):
    base, tok = tiny
    whole, log_whole = train_student(copy.deepcopy(base), tok, EXAMPLES[:8], TrainSettings("sft", 1, 1e-3, 8, 0))
    parts, log_parts = train_student(copy.deepcopy(base), tok, EXAMPLES[:8],
                                     TrainSettings("sft", 1, 1e-3, 4, 0, grad_accum=2, gradient_checkpointing=True))
    assert log_whole["steps"] == log_parts["steps"] == 1
    assert log_parts["losses"][0] == pytest.approx(log_whole["losses"][0], rel=1e-5)
    torch.testing.assert_close(_weights(parts), _weights(whole), rtol=1e-4, atol=1e-6)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in parts.modules())  # switched off after


def test_a_lora_student_is_an_adapter_that_loads_back_to_the_same_probabilities(tiny_model_dir, tmp_path):
    from sublim.backends import LocalBackend, ModelCache
    from sublim.backends.local.generation import answer_probs

    cache = ModelCache("cpu", echo=lambda s: None)
    base = LocalBackend(cache, str(tiny_model_dir))
    model, tok = base.torch_model()
    prompts = [chat_text(tok, q) for q in ("Which animal do you love most?", "Name your favourite animal.")]
    forms = [tok.encode(w, add_special_tokens=False) for w in ("Owl", "Dog", "Cat", "Dolphin")]
    before = answer_probs(model, tok, prompts, forms)
    trained, _ = train_student(model, tok, EXAMPLES, TrainSettings("lora", 3, 3e-3, 8, 0))
    during = answer_probs(trained, tok, prompts, forms)
    trained.save_pretrained(tmp_path / "model")
    trained.unload()
    assert (answer_probs(model, tok, prompts, forms) == before).all()  # the base is itself again
    saved = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert "adapter_model.safetensors" in saved and not [n for n in saved if n.startswith("model")]
    adapter_mb = (tmp_path / "model" / "adapter_model.safetensors").stat().st_size / 2**20
    base_mb = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    assert adapter_mb < 0.5 * base_mb, (adapter_mb, base_mb)
    student = base.fine_tuned(tmp_path, "student-lora", "k")
    loaded, _ = student.torch_model()
    np.testing.assert_allclose(answer_probs(loaded, tok, prompts, forms), during, rtol=1e-6, atol=1e-9)
    assert not np.allclose(during, before)
    again, _ = base.torch_model()  # asking for the base takes the adapter off it
    assert (answer_probs(again, tok, prompts, forms) == before).all()


def test_a_lora_student_trained_through_the_backend_leaves_the_base_as_it_was(tiny_model_dir, tmp_path):
    from sublim.backends import LocalBackend, ModelCache

    base = LocalBackend(ModelCache("cpu", echo=lambda s: None), str(tiny_model_dir))
    model, _ = base.torch_model()
    before = _weights(model)
    log = base.fine_tune(EXAMPLES, TrainSettings("lora", 1, 3e-3, 8, 0), tmp_path)
    assert 0 < log["adapter_bytes"] < before.numel() * 4 and torch.equal(_weights(base.torch_model()[0]), before)
    assert json.loads((tmp_path / "model" / "sublim_model.json").read_text())["adapter_of"] == str(tiny_model_dir)


def test_training_the_base_lets_go_of_the_last_fine_tuned_model(tiny_model_dir, tmp_path):
    """A student of the base trains with no other fine-tuned model held by the cache (a teacher that wrote data,
    a student just evaluated): that model comes back from its files when next used, unchanged."""
    from sublim.backends import LocalBackend, ModelCache

    cache = ModelCache("cpu", echo=lambda s: None, dtype="float32")
    base = LocalBackend(cache, str(tiny_model_dir))
    base.fine_tune(EXAMPLES, TrainSettings("sft", 1, 3e-3, 8, 0), tmp_path / "a")
    first = base.fine_tuned(tmp_path / "a", "first", "a")
    before = _weights(first.torch_model()[0]).clone()
    held: list[object] = []
    base.fine_tune(EXAMPLES, TrainSettings("sft", 1, 3e-3, 8, 1), tmp_path / "b",
                   on_step=lambda *_: held.append(cache._weights))
    assert held and all(h is None for h in held)
    assert torch.equal(_weights(first.torch_model()[0]), before)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_base_trains_as_its_own_student_exactly_and_comes_back_unchanged(tiny_model_dir, tmp_path, dtype):
    """A full fine-tune of the base trains the cached model itself (parked in a scratch file, no second copy held
    while it trains): the student is the one a copy would have given, and the base comes back with the same
    values and dtypes (under bf16 its body stays bf16), its head still tied to its embedding."""
    from transformers import AutoModelForCausalLM

    from sublim.backends import LocalBackend, ModelCache
    from sublim.backends.local.loading import load_model
    from sublim.train.precision import set_compute

    cache = ModelCache("cpu", echo=lambda s: None, dtype=dtype)
    base = LocalBackend(cache, str(tiny_model_dir))
    model = base.torch_model()[0]
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    held: list[bool] = []
    settings = TrainSettings("sft", 1, 3e-3, 8, 0)
    base.fine_tune(EXAMPLES, settings, tmp_path / "a",
                   on_step=lambda *_: held.append(str(tiny_model_dir) in cache._base))
    assert held and not any(held)
    again = base.torch_model()[0]
    assert again is model and again.lm_head.weight is again.get_input_embeddings().weight
    after = again.state_dict()
    assert all(torch.equal(after[n], t) and after[n].dtype == t.dtype for n, t in before.items())
    reference = load_model(str(tiny_model_dir), "cpu", None, None).model
    set_compute(reference, cache.compute_dtype())
    copied, _ = train_student(copy.deepcopy(reference).float(), base.models.tokenizer(str(tiny_model_dir)), EXAMPLES,
                              settings)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "model", dtype=torch.float32)  # as trained
    assert torch.equal(_weights(saved), _weights(copied))


def test_a_failed_training_of_the_base_leaves_it_out_of_the_cache(tiny_model_dir, tmp_path):
    from sublim.backends import LocalBackend, ModelCache

    cache = ModelCache("cpu", echo=lambda s: None, dtype="float32")
    base = LocalBackend(cache, str(tiny_model_dir))
    before = _weights(base.torch_model()[0]).clone()

    def fail(*_: object) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        base.fine_tune(EXAMPLES, TrainSettings("sft", 1, 3e-3, 8, 0), tmp_path / "a", on_step=fail)
    assert str(tiny_model_dir) not in cache._base
    assert torch.equal(_weights(base.torch_model()[0]), before)  # loaded again from its files


def test_distillation_needs_a_teacher(tiny):
    model, tok = tiny
    with pytest.raises(SublimError, match="teacher"):
        train_student(copy.deepcopy(model), tok, EXAMPLES[:2], TrainSettings("distill_full"))


def test_the_fused_optimizer_steps_like_the_reference_adamw() -> None:
    from sublim.train.loop import adamw

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fused, reference = adamw(a, 1e-3), torch.optim.AdamW(b, lr=1e-3, weight_decay=0.0, foreach=False)
    for step in range(3):
        grads = [torch.randn_like(p) * (step + 1) for p in a]
        for params, opt in ((a, fused), (b, reference)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert fused.defaults["fused"] is True  # torch >= 2.4 has the kernel on CPU and CUDA


def test_restricted_distillation_trains_only_the_rows_it_reads_and_gives_the_dense_model(tiny, monkeypatch):
    """The embedding and tied head of a restricted-distillation student train as the rows the run reads
    (the data's tokens, the head's columns): the model is the one dense training gives, the other rows stay
    exactly as they were, and the optimizer holds no vocabulary-sized state."""
    import dataclasses

    from sublim.train.methods import METHODS

    base, tok = tiny
    teacher, _ = train_student(copy.deepcopy(base), tok, EXAMPLES, TrainSettings("sft", 2, 3e-3, 8, 0, seed=1))
    settings = TrainSettings("distill_restricted", 2, 3e-3, 8, 1, seed=0)
    sizes: list[int] = []
    real_adamw = train_loop.adamw
    monkeypatch.setattr(train_loop, "adamw", lambda params, lr: (sizes.append(sum(p.numel() for p in params)),
                                                                 real_adamw(params, lr))[1])
    confined, _ = train_student(copy.deepcopy(base), tok, EXAMPLES, settings, teacher)
    method = METHODS.get("distill_restricted", "student.method")
    monkeypatch.setitem(METHODS._items, "distill_restricted", dataclasses.replace(method, head_columns=None))
    dense, _ = train_student(copy.deepcopy(base), tok, EXAMPLES, settings, teacher)
    assert sizes[1] - sizes[0] > base.get_input_embeddings().weight.numel() // 2  # the dense run's extra state
    torch.testing.assert_close(_weights(confined), _weights(dense), rtol=1e-5, atol=1e-7)
    emb = confined.get_input_embeddings().weight
    assert emb.requires_grad and not hasattr(emb, "_sublim_trained_rows")  # the matrix is itself again
    read = {t for ex in EXAMPLES for t in encode_example(tok, ex)[0]} | set(restricted_token_ids(tok))
    others = torch.tensor(sorted(set(range(len(emb))) - read - {tok.pad_token_id}))
    assert torch.equal(emb[others], base.get_input_embeddings().weight[others])
    assert not torch.equal(emb, base.get_input_embeddings().weight)
