"""Greedy decoding with a shrinking batch gives the tokens of ``generate``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sublim.backends.local.generation import _GiveUp, generate_batch, stop_ids
from sublim.train import chat_text


def _reference(model: Any, tok: Any, texts: list[str], max_new: int, give_up: Any) -> list[str]:
    """Greedy ``generate`` with the give-up test as a stopping criterion, each row cut where it ended."""
    from transformers import StoppingCriteriaList

    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    stop = stop_ids(tok, model)
    width = enc["input_ids"].shape[1]
    out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=stop,
                         pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None,
                         stopping_criteria=StoppingCriteriaList([_GiveUp(tok, width, give_up)]))
    texts_out = []
    for row in out[:, width:].tolist():
        ids: list[int] = []
        for t in row:
            if t in stop:
                break
            ids.append(t)
            if give_up(tok.decode(ids, skip_special_tokens=True)):
                break
        texts_out.append(tok.decode(ids, skip_special_tokens=True))
    return texts_out


def test_shrinking_greedy_matches_generate(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    prompts = [f"List {k} numbers after {7 * k + 3}" + " please" * (k % 3) for k in range(9)]
    texts = [chat_text(tok, p) for p in prompts]

    def give_up(text: str) -> bool:  # the tiny model answers "Dolphin", "Wolf" or "Dog": ends the first two early
        return "l" in text

    with torch.no_grad():
        for rule in (None, give_up):
            got = generate_batch(model, tok, texts, list(range(9)), max_new_tokens=10, temperature=0.0,
                                 give_up=rule)
            want = _reference(model, tok, texts, 10, rule or (lambda _t: False))
            assert [c.text for c in got] == want
            assert [c.index for c in got] == list(range(9))
    # rows ended at different steps (by the rule and by their end-of-turn), so the batch shrank
    assert len({c.n_tokens for c in got}) > 1
    assert any(give_up(c.text) and not c.finished for c in got) and any(c.finished for c in got)


def test_shared_prefix_and_host_windows_change_no_token(tiny: tuple[Any, Any]) -> None:
    """The prefix cache copied into each batch, and looking at the tokens every 4 steps instead of every
    step, give the tokens of the plain path; so do the answer probabilities after a shared prefix."""
    from sublim.backends.local.backend import shared_prefix
    from sublim.backends.local.generation import answer_probs

    model, tok = tiny
    prompts = [f"List {k} numbers after {7 * k + 3}" + " please" * (k % 3) for k in range(9)]
    texts = [chat_text(tok, p, system="You count.") for p in prompts]
    prefix = shared_prefix(model, tok, texts)
    assert prefix is not None and len(prefix.ids) >= 4
    assert all(tok.encode(t, add_special_tokens=False)[: len(prefix.ids)] == prefix.ids for t in texts)

    def give_up(text: str) -> bool:
        return "l" in text

    with torch.no_grad():
        plain = generate_batch(model, tok, texts, list(range(9)), max_new_tokens=10, temperature=0.0, give_up=give_up)
        for kwargs in ({"prefix": prefix}, {"sync_every": 4}, {"prefix": prefix, "sync_every": 3}):
            got = generate_batch(model, tok, texts, list(range(9)), max_new_tokens=10, temperature=0.0,
                                 give_up=give_up, **kwargs)
            assert [(c.text, c.finished, c.n_tokens) for c in got] == [(c.text, c.finished, c.n_tokens) for c in plain]
        forms = [tuple(tok.encode(w, add_special_tokens=False)) for w in ("Owl", "Dolphin", "Wolf", "Dog", "cat")]
        want = answer_probs(model, tok, texts, forms, batch_size=4)
        got_p = answer_probs(model, tok, texts, forms, batch_size=4, prefix=prefix)
    np.testing.assert_allclose(got_p, want, rtol=1e-4, atol=1e-9)
    assert want.min() > 0


def test_the_last_round_asks_only_for_the_rows_still_missing() -> None:
    from sublim.experiment.stages.generate import next_round

    assert next_round(64, 150, 0, 0) == 128  # no pass rate yet: two batches
    assert next_round(64, 150, 0, 128) == 128  # nothing passed so far: still two batches
    assert next_round(64, 150, 131, 256) == 47  # 19 missing at a pass rate of 0.51: 38 prompts, plus a quarter
    assert next_round(64, 150, 149, 256) == 16  # at least a quarter batch
    assert next_round(64, 1000, 10, 128) == 128  # never more than two batches
    assert next_round(2, 10, 9, 20) == 3  # one missing at a pass rate of 0.45: 2.2 prompts, plus a quarter


def test_stop_strings_cut_at_the_earliest_match_in_any_order():
    from sublim.backends.local.generation import cut_at_stop

    text = "12 34\n56; 78"
    assert cut_at_stop(text, False, [";", "\n"]) == ("12 34", True)
    assert cut_at_stop(text, False, ["\n", ";"]) == ("12 34", True)
    assert cut_at_stop(text, False, ["#"]) == (text, False)
    assert cut_at_stop(text, True, []) == (text, True)
