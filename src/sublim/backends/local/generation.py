"""Batched chat generation, exact answer probabilities and completion log-probabilities of a
transformers model: the torch side of the local backend."""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from sublim.backends.base import Completion
from sublim.core.meter import METER
from sublim.train.cost import weight_counts
from sublim.train.encode import chat_text
from sublim.train.precision import autocast, float32_head, head_logits

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


@dataclass
class Prefix:
    """The token prefix every prompt of a call shares (the chat template's head, a system prompt) and its
    KV cache for one row: encoded once, then copied into each batch instead of being recomputed."""

    ids: list[int]
    cache: Any

    def expand(self, n: int) -> Any:
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(n)
        return cache


def cut_at_stop(text: str, finished: bool, stop: Sequence[str]) -> tuple[str, bool]:
    """The text up to the earliest occurrence of any stop string (and finished), or as it was: whichever order
    the stop strings are given in (the server and the local backend cut alike)."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(found)], True) if found else (text, finished)


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix all ``seqs`` share, leaving every one at least one token."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(x) for x in seqs) - 1
    for i in range(max(n, 0)):
        if any(x[i] != first[i] for x in seqs):
            return i
    return max(n, 0)


@torch.no_grad()
def encode_prefix(model: Any, ids: Sequence[int]) -> Prefix | None:
    """The KV cache of ``ids`` (one row); None for an empty prefix."""
    if not ids:
        return None
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    _, cache = decoder_states(model, torch.tensor([list(ids)], device=device))
    body, _ = weight_counts(model)
    METER.add("prefill", len(ids), time.perf_counter() - t0, 2 * body * len(ids))
    return Prefix(list(ids), cache)


def after_prefix(tokenizer: Any, prompts: Sequence[str], prefix: Prefix | None) -> list[list[int]]:
    """Each prompt's tokens after ``prefix`` (all of them without one); each must start with it and extend it."""
    seqs = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    if prefix is None:
        return seqs
    k = len(prefix.ids)
    if any(seq[:k] != prefix.ids or len(seq) <= k for seq in seqs):
        raise ValueError("every prompt must start with the shared prefix and extend it")
    return [seq[k:] for seq in seqs]


def decoder_states(model: Any, input_ids: torch.Tensor, cache: Any | None = None, *, bf16: bool | None = None,
                   **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """The transformer body's last hidden states and KV cache (the body under the device's autocast, or bf16
    autocast on or off as ``bf16`` says; the head is applied by the caller, in float32, only where it reads
    logits: :func:`head_logits`)."""
    body = model.get_decoder()
    if cache is not None:
        kwargs[cache_arg(body)] = cache
    policy = autocast(model) if bf16 is None else \
        torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=bf16)
    with policy:
        out = body(input_ids=input_ids, use_cache=True, **kwargs)
    return out.last_hidden_state, out.past_key_values


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _left_padded(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, seq in enumerate(seqs):
        if seq:
            ids[r, width - len(seq):] = torch.tensor(list(seq))
            mask[r, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def prefixed_states(model: Any, seqs: Sequence[Sequence[int]], pad_id: int, prefix: Prefix | None = None,
                    bf16: bool | None = None) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
    """The body over left-padded ``seqs`` after ``prefix`` (its cache copied in): (hidden states, cache, attention
    mask over prefix and rows, each row's positions)."""
    device = next(model.parameters()).device
    ids, mask = _left_padded(seqs, pad_id, device)
    cache = None
    if prefix is not None:
        mask = torch.cat([mask.new_ones(len(seqs), len(prefix.ids)), mask], dim=1)
        cache = prefix.expand(len(seqs))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, mask.shape[1] - ids.shape[1]:]
    hidden, cache = decoder_states(model, ids, cache, bf16=bf16, attention_mask=mask, position_ids=pos)
    return hidden, cache, mask, pos


def prefill(model: Any, seqs: Sequence[Sequence[int]], pad_id: int, prefix: Prefix | None = None
            ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
    """One forward pass over left-padded prompts (after ``prefix``, whose cache is copied in), with the
    output head at the last position only. Returns (last logits, cache, attention mask over prefix and
    prompts, the last position of each row)."""
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    hidden, cache, mask, pos = prefixed_states(model, seqs, pad_id, prefix)
    logits = head_logits(model, hidden[:, -1])
    _sync(device)
    body, head = weight_counts(model)
    n_tok = sum(len(x) for x in seqs)
    METER.add("prefill", n_tok, time.perf_counter() - t0, 2 * body * n_tok + 2 * head * len(seqs))
    return logits, cache, mask, pos[:, -1]


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
    prefix: Prefix | None = None,
    sync_every: int | None = None,
) -> list[Completion]:
    """Generate one batch; sampling is seeded per batch so a resumed run repeats it exactly.

    ``give_up(text)`` may end a row early once its text can no longer be kept (e.g. a letter
    in a numbers answer). Such rows come back with ``finished=False`` and the text so far; the other
    rows are unchanged. Greedy decoding drops ended rows from the batch; sampling runs ``generate``
    to the last useful row (dropping rows would change the random draws of the others). Greedy
    decoding reuses ``prefix`` (which every prompt must start with) instead of recomputing it, and looks
    at the tokens on the host every ``sync_every`` steps (default: every step on a CPU, every 8 on a GPU).
    """
    device = next(model.parameters()).device
    stop = stop_ids(tokenizer, model)
    rows: list[list[int]]
    if temperature > 0:
        tokenizer.padding_side = "left"
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        extra: dict[str, Any] = {}
        if give_up is not None:
            extra["stopping_criteria"] = StoppingCriteriaList(
                [_GiveUp(tokenizer, enc["input_ids"].shape[1], give_up)])
        t0 = time.perf_counter()
        out = sample(model, enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens,
                     temperature=temperature, top_p=top_p, seed=seed, stop=stop, pad_id=tokenizer.pad_token_id,
                     **extra)
        rows = out[:, enc["input_ids"].shape[1] :].cpu().tolist()
        body, head = weight_counts(model)
        n_new = int(out[:, enc["input_ids"].shape[1]:].numel())
        METER.add("decode", n_new, time.perf_counter() - t0, 2 * (body + head) * (n_new + enc["input_ids"].numel()))
    else:
        seqs = after_prefix(tokenizer, prompts, prefix)
        every = sync_every or (8 if device.type == "cuda" else 1)
        rows = _greedy_shrinking(model, tokenizer, seqs, prefix, set(stop), max_new_tokens, give_up, every)
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


def sample(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
           temperature: float, top_p: float, seed: int | None, stop: Sequence[int], pad_id: int | None,
           **extra: Any) -> Any:
    """``model.generate`` over left-padded rows as the package decodes: sampled at ``temperature`` with nucleus
    ``top_p`` and no top-k (seeded first, unless ``seed`` is None), greedy at 0; ended by any ``stop`` token; the
    body under the model's autocast, the head in float32. ``extra`` goes to ``generate`` as it is (a streamer,
    stopping criteria, a time limit, logits to return): the local backend and the server sample alike."""
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": list(stop), "pad_token_id": pad_id}
    if temperature > 0:
        if seed is not None:
            torch.manual_seed(seed)
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with autocast(model), float32_head(model):
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs, **extra)


def cache_arg(model: Any) -> str:
    """The forward keyword for a KV cache: ``cache`` in recent transformers, ``past_key_values`` before."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _greedy_shrinking(model: Any, tokenizer: Any, seqs: Sequence[Sequence[int]], prefix: Prefix | None,
                      stop: set[int], max_new_tokens: int, give_up: Callable[[str], bool] | None,
                      sync_every: int = 1) -> list[list[int]]:
    """Greedy decoding that drops each row from the batch (and its KV cache) once it ends or gives up,
    so the remaining rows run at the cost of their own batch size: ``generate`` keeps computing
    finished rows until the last one ends. Same tokens as greedy ``generate``; a row's list ends with
    the stop token or the token that made ``give_up`` true. The new tokens stay on the device for
    ``sync_every`` steps, then the host looks at them once (a row that ended within them is cut there)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logits, cache, mask, last = prefill(model, seqs, pad, prefix)
    body, head = weight_counts(model)
    nxt = logits.argmax(-1)
    alive = list(range(len(seqs)))
    rows: list[list[int]] = [[] for _ in alive]
    pending: list[torch.Tensor] = []
    t0, n_decoded = time.perf_counter(), 0
    for step in range(max_new_tokens):
        pending.append(nxt)
        final = step == max_new_tokens - 1
        if len(pending) >= sync_every or final:
            window = torch.stack(pending, dim=1).tolist()
            pending = []
            keep = []
            for r, (row, toks) in enumerate(zip(alive, window, strict=True)):
                ended = False
                for tid in toks:
                    rows[row].append(tid)
                    if tid in stop or (give_up is not None
                                       and give_up(tokenizer.decode(rows[row], skip_special_tokens=True))):
                        ended = True
                        break
                if not ended:
                    keep.append(r)
            if not keep:
                break
            if len(keep) < len(alive):
                sel = torch.tensor(keep, device=device)
                cache.batch_select_indices(sel)
                mask, nxt, last = mask[sel], nxt[sel], last[sel]
                alive = [alive[r] for r in keep]
        if final:
            break
        mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
        last = last + 1
        hidden, cache = decoder_states(model, nxt[:, None], cache, attention_mask=mask, position_ids=last[:, None])
        nxt = head_logits(model, hidden[:, -1]).argmax(-1)
        n_decoded += len(alive)
    _sync(device)
    METER.add("decode", n_decoded, time.perf_counter() - t0, 2 * (body + head) * n_decoded)
    return rows


def form_tree(forms: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """The distinct proper prefixes of the multi-token forms: the continuations whose next-token
    distribution the chain rule reads (``Ow``+``l`` and ``Ow``+``ls`` share the node ``Ow``)."""
    nodes = {tuple(f[:i]) for f in forms for i in range(1, len(f))}
    return sorted(nodes, key=lambda t: (len(t), t))


def _tree_mask(nodes: Sequence[tuple[int, ...]], prompt_mask: torch.Tensor, additive: bool) -> torch.Tensor:
    """4D mask [rows, 1, nodes, prompt + nodes]: a node sees the row's prompt and its own ancestors
    (itself included), never a sibling. Boolean (True: seen) for SDPA, additive float32 for eager attention."""
    n, m = len(prompt_mask), len(nodes)
    index = {t: j for j, t in enumerate(nodes)}
    tree = torch.zeros((m, m), dtype=torch.bool)
    for j, t in enumerate(nodes):
        for i in range(1, len(t) + 1):
            tree[j, index[t[:i]]] = True
    seen = torch.cat([prompt_mask.bool()[:, None, :].expand(n, m, -1), tree.to(prompt_mask.device).expand(n, m, m)],
                     dim=2)
    if not additive:
        return seen[:, None]
    out = torch.zeros(seen.shape, dtype=torch.float32, device=prompt_mask.device)
    out.masked_fill_(~seen, torch.finfo(torch.float32).min)
    return out[:, None]


@torch.no_grad()
def answer_probs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    forms: Sequence[Sequence[int]],
    batch_size: int = 32,
    progress: Callable[[int], object] | None = None,
    prefix: Prefix | None = None,
) -> np.ndarray:
    """Exact probability that the answer to each prompt begins with each token sequence.

    P(t1..tk | prompt) by the chain rule: one forward pass over the prompts (after the shared
    ``prefix``, reused), then one more over every multi-token form at once: the forms' proper
    prefixes are laid out as a tree after the prompt, each attending to the prompt and its own
    ancestors. Returns [n_prompts, n_forms].
    """
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nodes = form_tree(forms)
    index = {t: j for j, t in enumerate(nodes)}
    depth = torch.tensor([len(t) for t in nodes], device=device)
    node_ids = torch.tensor([t[-1] for t in nodes], dtype=torch.long, device=device)
    body, head = weight_counts(model)
    seqs = after_prefix(tokenizer, prompts, prefix)
    out = np.zeros((len(prompts), len(forms)))
    for chunk in batches(range(len(prompts)), batch_size):
        logits, cache, mask, last = prefill(model, [seqs[i] for i in chunk], pad, prefix)
        first = torch.softmax(logits, dim=-1)
        p = first[:, [f[0] for f in forms]].clone()
        if nodes:
            n = len(chunk)
            t0 = time.perf_counter()
            impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
            attn = _tree_mask(nodes, mask, additive=impl == "eager")
            hidden, _ = decoder_states(model, node_ids.repeat(n, 1), cache, attention_mask=attn,
                                       position_ids=last[:, None] + depth[None, :])
            times_later_tokens(p, model, hidden, forms, index)
            _sync(device)
            METER.add("prefill", n * len(nodes), time.perf_counter() - t0, 2 * (body + head) * n * len(nodes))
        out[chunk] = p.cpu().numpy()
        if progress:
            progress(len(chunk))
    return out


TREE_LOGITS = 1 << 22
"""The most float32 logits the tree pass holds at once ([rows, nodes, vocabulary] in row chunks): 16 MB, where
one chunk of a batch (50 prompts x ~30 nodes x 49k) would be ~1 GB, twice over with its softmax."""


def times_later_tokens(p: torch.Tensor, model: Any, hidden: torch.Tensor, forms: Sequence[Sequence[int]],
                       index: dict[tuple[int, ...], int]) -> None:
    """Multiply ``p`` ([rows, forms]: each form's first-token probability) in place by each form's later tokens'
    probabilities, read from ``hidden`` ([rows, nodes, width]: the states at the forms' proper prefixes). The
    head is applied a few rows at a time, keeping only the probabilities the forms read."""
    rows, n_nodes = hidden.shape[:2]
    vocab = model.get_output_embeddings().weight.shape[0]
    step = max(1, TREE_LOGITS // max(1, n_nodes * vocab))
    for r in range(0, rows, step):
        probs = torch.softmax(head_logits(model, hidden[r : r + step]), dim=-1)  # [step, nodes, vocab]
        for j, form in enumerate(forms):
            for i in range(1, len(form)):
                p[r : r + step, j] *= probs[:, index[tuple(form[:i])], form[i]]


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
        hidden, _ = decoder_states(model, ids.to(device), attention_mask=mask.to(device))
        logits = head_logits(model, hidden)
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        for r, i in enumerate(chunk):
            seq, start = encoded[i]
            span = logp[r, start - 1 : len(seq) - 1]
            totals[i] = float(span.sum())
            counts[i] = span.numel()
        if progress:
            progress(len(chunk))
    return totals, counts
