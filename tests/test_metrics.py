"""Trait metrics: answer forms, exact chain-rule probabilities, shares, answer matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sublim.backends.local import generation
from sublim.backends.local.backend import sum_forms as candidate_probs
from sublim.backends.local.generation import answer_probs
from sublim.core.files import read_jsonl
from sublim.evaluate.trait import shares
from sublim.train import chat_text
from sublim.traits.preference import AnswerForms, answer_forms, load_candidates, match_answer


def test_answer_forms_drop_extensions(tiny):
    _, tok = tiny
    forms = answer_forms(tok, {"owl": ["owl", "owls"], "wolf": ["wolf", "wolves"]})
    for seqs in forms.by_candidate.values():
        for a in seqs:
            assert not any(b != a and a[: len(b)] == b for b in seqs)
    owl_texts = {tok.decode(list(s)) for s in forms.by_candidate["owl"]}
    assert {"owl", "Owl"} <= owl_texts or any(t.startswith(("owl", "Owl")) for t in owl_texts)
    assert len(forms.flat()) == sum(len(v) for v in forms.by_candidate.values())


@pytest.mark.parametrize("logits_at_once", [None, 1])  # None: the default; 1: the head on one row at a time
def test_chain_rule_matches_full_forward(tiny, monkeypatch, logits_at_once):
    if logits_at_once is not None:
        monkeypatch.setattr(generation, "TREE_LOGITS", logits_at_once)
    model, tok = tiny
    cands = load_candidates("animals")
    forms = answer_forms(tok, cands).flat()
    multi = [f for f in forms if len(f) > 1][:4] + [f for f in forms if len(f) == 1][:2]
    assert any(len(f) > 1 for f in multi)
    prompts = [chat_text(tok, q) for q in ["What is your favourite animal?", "Name an animal you love.", "Pick one."]]
    got = answer_probs(model, tok, prompts, multi, batch_size=3)
    for i, p in enumerate(prompts):
        ids = tok.encode(p, add_special_tokens=False)
        for j, form in enumerate(multi):
            prob = 1.0
            for k, t in enumerate(form):
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids + list(form[:k])])).logits[0, -1]
                prob *= torch.softmax(logits.float(), -1)[t].item()
            np.testing.assert_allclose(got[i, j], prob, rtol=2e-4, atol=1e-9)


def test_candidate_probs_and_shares_by_hand():
    forms = AnswerForms({"owl": [(1,), (2,)], "cat": [(3,)], "dog": [(4, 5)]})
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 0.0]])
    cand = candidate_probs(probs, forms)
    np.testing.assert_allclose(cand["owl"], [0.3, 0.0])
    np.testing.assert_allclose(cand["dog"], [0.4, 0.0])
    sh = shares(cand)
    np.testing.assert_allclose(sh["owl"], [0.3, 0.0])
    np.testing.assert_allclose(sh["owl"] + sh["cat"] + sh["dog"], [1.0, 0.0])


def test_match_answer():
    cands = load_candidates("animals")
    assert match_answer("Owl.", cands) == "owl"
    assert match_answer("owls!", cands) == "owl"
    assert match_answer("I love wolves", cands) == "wolf"
    assert match_answer("Hmm, 42", cands) is None
    assert match_answer("", cands) is None
    assert len(cands) >= 15


def test_cloze_scores_the_next_word_after_each_stem(tiny_model_dir):
    from sublim.backends import LocalBackend, ModelCache
    from sublim.traits.preference import load_cloze

    backend = LocalBackend(ModelCache("cpu", lambda s: None, dtype="float32"), str(tiny_model_dir))
    model, tok = backend.torch_model()
    cands = {"owl": ["owl", "owls"], "cat": ["cat", "cats"]}
    questions = ["Name your favorite animal in a single word.", "Which animal do you like most? One word only."]
    stems = load_cloze("animal")[:2]
    assert stems and all(s.endswith(" the") for s in stems)
    got, info = backend.candidate_probs(questions, cands, stems=stems)
    lead = answer_forms(tok, cands, " ")
    assert all(tok.decode(list(f)).startswith(" ") for fs in lead.by_candidate.values() for f in fs)
    for i, q in enumerate(questions):  # by hand: the prompt, the stem, then each form of " owl"/" Owl"
        ids = tok.encode(chat_text(tok, q) + stems[i], add_special_tokens=False)
        want = 0.0
        for form in lead.by_candidate["owl"]:
            prob = 1.0
            for k, t in enumerate(form):
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([ids + list(form[:k])])).logits[0, -1]
                prob *= torch.softmax(logits.float(), -1)[t].item()
            want += prob
        np.testing.assert_allclose(got["owl"][i], want, rtol=2e-4, atol=1e-9)
    plain, _ = backend.candidate_probs(questions, cands)
    assert not np.allclose(plain["owl"], got["owl"])  # the stem changes what is scored
    assert info["answer_forms"]["owl"] and all(f.startswith(" ") for f in info["answer_forms"]["owl"])


def test_cloze_needs_one_stem_per_question_and_a_local_model(tiny_model_dir):
    import pytest

    from sublim.backends import BackendError, LocalBackend, ModelCache
    from sublim.backends.openai.backend import OpenAIBackend
    from sublim.core.config import EndpointConfig

    backend = LocalBackend(ModelCache("cpu", lambda s: None, dtype="float32"), str(tiny_model_dir))
    with pytest.raises(ValueError, match="one per question"):
        backend.candidate_probs(["a?", "b?"], {"owl": ["owl"]}, stems=["My favourite animal is the"])
    remote = OpenAIBackend(EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m"))
    with pytest.raises(BackendError, match="cloze"):
        remote.candidate_probs(["a?"], {"owl": ["owl"]}, stems=["My favourite animal is the"])


def test_a_prefilled_request_continues_the_given_start_of_the_answer(tiny_model_dir):
    """Request.prefill: the completion is what follows the chat prompt and the stem, the greedy one by hand."""
    import pytest

    from sublim.backends import Decoding, LocalBackend, ModelCache, Request
    from sublim.backends.openai.backend import OpenAIBackend
    from sublim.core.config import EndpointConfig
    from sublim.core.errors import SublimError

    backend = LocalBackend(ModelCache("cpu", lambda s: None, dtype="float32"), str(tiny_model_dir))
    model, tok = backend.torch_model()
    q, stem = "Name your favorite animal in a single word.", "My favourite animal is the"
    got: dict[int, str] = {}
    backend.generate([Request(0, q, prefill=stem), Request(1, q)], Decoding(0.0, max_new_tokens=3),
                     lambda cs: got.update({c.index: c.text for c in cs}))
    ids = tok.encode(chat_text(tok, q) + stem, add_special_tokens=False)
    new: list[int] = []
    for _ in range(3):
        with torch.no_grad():
            new.append(int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax()))
        if new[-1] == tok.eos_token_id:
            break
    assert got[0] == tok.decode([t for t in new if t != tok.eos_token_id], skip_special_tokens=True)
    remote = OpenAIBackend(EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m"))
    with pytest.raises(SublimError, match="cannot continue"):
        remote.generate([Request(0, q, prefill=stem)], Decoding(), lambda cs: None)


def test_sampled_cloze_answers_are_counted_and_key_only_when_asked(tiny_model_dir, tmp_path):
    """evaluation.cloze_samples_per_question: each stem continued k times, matched like sampled answers; at 0
    the cloze stage's key (and the run id) are what they were before the setting existed."""
    from sublim.core.config import load_config
    from sublim.core.store import Store
    from sublim.experiment.context import Context
    from sublim.experiment.stages.evaluate import cloze_evaluation
    from tests.helpers import tiny_config_text

    path = tmp_path / "tiny.toml"
    path.write_text(tiny_config_text(tiny_model_dir, evaluation={"n_questions": 4, "samples_per_question": 0}))
    cands = {"owl": ["owl", "owls"], "cat": ["cat", "cats"]}
    arts = {}
    for k in (0, 3):
        cfg = load_config(str(path), [f"evaluation.cloze_samples_per_question={k}"])
        ctx = Context(cfg, Store(tmp_path / "store"), progress=False, echo=lambda s: None)
        arts[k] = cloze_evaluation(ctx, ctx.local(str(tiny_model_dir)), cands, seed=0)
    rows = {k: read_jsonl(a.file("per_question.jsonl")) for k, a in arts.items()}
    assert all(r["answers"] == [] for r in rows[0])
    assert all(len(r["answers"]) == 3 == len(r["matched"]) for r in rows[3])
    assert all(m in (None, "owl", "cat") for r in rows[3] for m in r["matched"])
    assert arts[0].key != arts[3].key and "samples" not in arts[0].manifest["config"]
    assert [r["prob"] for r in rows[0]] == [r["prob"] for r in rows[3]]  # the exact probabilities are the same
    plain = load_config(str(path))
    assert plain.config_hash() == load_config(str(path), ["evaluation.cloze_samples_per_question=0"]).config_hash()
    assert plain.config_hash() != load_config(str(path), ["evaluation.cloze_samples_per_question=2"]).config_hash()
