"""Batched chat generation, exact answer probabilities and completion log-probabilities of a
transformers model: the torch side of the local backend."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from sublim.backends.base import Completion
from sublim.train.encode import chat_text
from sublim.train.precision import autocast

END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")
"""End-of-turn tokens of common chat formats, used when the tokenizer has them."""


class _GiveUp(StoppingCriteria):
    """Per-row stop once ``give_up`` says the text so far can never pass the filter."""

    def __init__(self, tokenizer: Any, prompt_len: int, give_up: Callable[[str], bool]) -> None:
        self.tokenizer, self.prompt_len, self.give_up = tokenizer, prompt_len, give_up

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        done = [self.give_up(t) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def stop_ids(tokenizer: Any, model: Any | None = None) -> list[int]:
    """Tokens that end an answer: the tokenizer's end of sequence, the model's generation config's
    ``eos_token_id`` (one id or several: chat models often end a turn with a token of their own), and
    the end-of-turn tokens of common chat formats that the vocabulary has."""
    ids: set[Any] = {tokenizer.eos_token_id}
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    ids |= set(eos) if isinstance(eos, list | tuple) else {eos}
    for tok in END_OF_TURN:
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


def batches(indices: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield list(indices[start : start + size])


@torch.no_grad()
def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    indices: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    seed: int = 0,
    give_up: Callable[[str], bool] | None = None,
) -> list[Completion]:
    """Generate one batch; sampling is seeded per batch so a resumed run repeats it exactly.

    ``give_up(text)`` may end a row early once its text can no longer be kept (e.g. a letter
    in a numbers answer). Such rows come back with ``finished=False`` and the text so far; the other
    rows are unchanged. Greedy decoding drops ended rows from the batch; sampling runs ``generate``
    to the last useful row (dropping rows would change the random draws of the others).
    """
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    stop = stop_ids(tokenizer, model)
    rows: list[list[int]]
    if temperature > 0:
        torch.manual_seed(seed)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": stop,
                                  "pad_token_id": tokenizer.pad_token_id, "do_sample": True,
                                  "temperature": temperature, "top_p": top_p, "top_k": 0}
        if give_up is not None:
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_GiveUp(tokenizer, enc["input_ids"].shape[1], give_up)])
        with autocast(device):
            out = model.generate(**enc, **kwargs)
        rows = out[:, enc["input_ids"].shape[1] :].cpu().tolist()
    else:
        rows = _greedy_shrinking(model, tokenizer, enc, set(stop), max_new_tokens, give_up)
    results = []
    for ids, idx in zip(rows, indices, strict=True):
        finished = False
        for pos, tid in enumerate(ids):
            if tid in stop:
                ids = ids[:pos]
                finished = True
                break
        text = tokenizer.decode(ids, skip_special_tokens=True)
        results.append(Completion(int(idx), text, len(ids), finished))
    return results


def _cache_arg(model: Any) -> str:
    """The forward keyword for a KV cache: ``cache`` in recent transformers, ``past_key_values`` before."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _greedy_shrinking(model: Any, tokenizer: Any, enc: Any, stop: set[int], max_new_tokens: int,
                      give_up: Callable[[str], bool] | None) -> list[list[int]]:
    """Greedy decoding that drops each row from the batch (and its KV cache) as soon as it ends or
    gives up, so the remaining rows run at the cost of their own batch size: ``generate`` keeps
    computing finished rows until the last one ends. Same tokens as greedy ``generate``; a row's list
    ends with the stop token or the token that made ``give_up`` true."""
    device = enc["input_ids"].device
    mask = enc["attention_mask"]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with autocast(device):
        res = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=pos, use_cache=True)
    cache, cache_arg = res.past_key_values, _cache_arg(model)
    nxt = res.logits[:, -1, :].argmax(-1)
    last = pos[:, -1]
    alive = list(range(len(mask)))
    rows: list[list[int]] = [[] for _ in alive]
    for step in range(max_new_tokens):
        keep = []
        for r, (row, tid) in enumerate(zip(alive, nxt.tolist(), strict=True)):
            rows[row].append(tid)
            if tid in stop or (give_up is not None and give_up(tokenizer.decode(rows[row], skip_special_tokens=True))):
                continue
            keep.append(r)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(alive):
            sel = torch.tensor(keep, device=device)
            cache.batch_select_indices(sel)
            mask, nxt, last = mask[sel], nxt[sel], last[sel]
            alive = [alive[r] for r in keep]
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
        last = last + 1
        with autocast(device):
            res = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None],
                        use_cache=True, **{cache_arg: cache})
        nxt = res.logits[:, -1, :].argmax(-1)
    return rows


@torch.no_grad()
def answer_probs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    forms: Sequence[Sequence[int]],
    batch_size: int = 32,
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Exact probability that the answer to each prompt begins with each token sequence.

    P(t1..tk | prompt) by the chain rule: one forward pass over the prompts, then each
    multi-token form continues from the cached prompt (cropped back after each form).
    Returns [n_prompts, n_forms].
    """
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    out = np.zeros((len(prompts), len(forms)))
    for chunk in batches(range(len(prompts)), batch_size):
        enc = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        position_ids = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        with autocast(device):
            res = model(**enc, position_ids=position_ids, use_cache=True)
        first = torch.softmax(res.logits[:, -1, :].float(), dim=-1)
        cache, cache_arg = res.past_key_values, _cache_arg(model)
        n = len(chunk)
        for j, form in enumerate(forms):
            p = first[:, form[0]].clone()
            if len(form) > 1:
                k = len(form) - 1
                ids = torch.tensor(form[:-1], device=device).repeat(n, 1)
                mask = torch.cat([enc["attention_mask"], torch.ones(n, k, dtype=enc["attention_mask"].dtype,
                                                                    device=device)], dim=1)
                pos = position_ids[:, -1:] + torch.arange(1, k + 1, device=device)
                with autocast(device):
                    cont = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                 **{cache_arg: cache})
                probs = torch.softmax(cont.logits.float(), dim=-1)
                for i in range(k):
                    p *= probs[:, i, form[i + 1]]
                cache.crop(-k)
            out[chunk, j] = p.cpu().numpy()
        if progress:
            progress(len(chunk))
    return out


@torch.no_grad()
def completion_logprobs(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    system: str | None = None,
    batch_size: int = 8,
    progress: Callable[[int], object] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """log p(completion | prompt) under the chat template, per pair, and its token count.

    The completion is everything the template renders after the generation prompt (the answer
    and its end-of-turn marker), so the figure is comparable across system prompts.
    """
    device = next(model.parameters()).device
    encoded = []
    for prompt, completion in pairs:
        head = chat_text(tokenizer, prompt, system=system)
        full = chat_text(tokenizer, prompt, system=system, assistant=completion)
        h_ids = tokenizer.encode(head, add_special_tokens=False)
        c_ids = tokenizer.encode(full[len(head):] if full.startswith(head) else completion, add_special_tokens=False)
        encoded.append((h_ids + c_ids, len(h_ids)))
    totals = np.zeros(len(pairs))
    counts = np.zeros(len(pairs), dtype=int)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for chunk in batches(range(len(encoded)), batch_size):
        width = max(len(encoded[i][0]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            seq = encoded[i][0]
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        with autocast(device):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        for r, i in enumerate(chunk):
            seq, start = encoded[i]
            span = logp[r, start - 1 : len(seq) - 1]
            totals[i] = float(span.sum())
            counts[i] = span.numel()
        if progress:
            progress(len(chunk))
    return totals, counts
