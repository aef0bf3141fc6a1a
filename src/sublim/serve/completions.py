"""``POST /v1/completions``, the legacy completions of raw text (no chat template): what lm-evaluation-harness
reads log-likelihoods from. A prompt is a string, a list of strings, a list of token ids or a list of such lists;
with ``echo`` and ``logprobs`` every prompt token's exact log-probability comes back (one forward pass), and with
``max_tokens`` 0 nothing is generated."""

from __future__ import annotations

import time
import uuid
from typing import Any

from sublim.serve.errors import RequestError
from sublim.serve.limits import Limits
from sublim.serve.parsing import MAX_PROMPTS, budget, number, sampling
from sublim.serve.worker import GenRequest, Scored


def _token_ids(ids: list[Any], vocab: int, i: int) -> list[int]:
    if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in ids):
        raise RequestError(400, f"prompt {i}: token ids must be integers in [0, {vocab})", "prompt")
    return list(ids)


def prompts(prompt: Any, tokenizer: Any) -> list[tuple[str, list[int]]]:
    """(text, token ids) of each prompt; a text prompt is tokenized as the model's tokenizer does by default
    (with any start-of-sequence token it adds), a prompt given as ids is used as it is."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not isinstance(prompt, list) or not 1 <= len(prompt) <= MAX_PROMPTS:
        raise RequestError(400, f"'prompt' must be a string, a list of 1 to {MAX_PROMPTS} strings, a list of token "
                                "ids or a list of such lists", "prompt")
    out = []
    for i, p in enumerate(prompt):
        if isinstance(p, str):
            ids = tokenizer.encode(p, add_special_tokens=True) if p else []
            out.append((p, ids))
        elif isinstance(p, list):
            ids = _token_ids(p, len(tokenizer), i)
            out.append((tokenizer.decode(ids), ids))
        else:
            raise RequestError(400, f"prompt {i} is {type(p).__name__}: send text or a list of token ids", "prompt")
        if not ids:
            raise RequestError(400, f"prompt {i} is empty: send at least one token", "prompt")
    return out


def _refuse(body: dict[str, Any]) -> None:
    if body.get("stream"):
        raise RequestError(400, "streaming is not supported on /v1/completions: send \"stream\": false (chat "
                                "completions stream)", "stream")
    if body.get("suffix") not in (None, ""):
        raise RequestError(400, "'suffix' (insertion) is not supported: remove it", "suffix")
    if body.get("best_of") not in (None, 1):
        raise RequestError(400, "'best_of' is not supported: remove it (use n for several completions)", "best_of")


def parse_completion_request(body: dict[str, Any], tokenizer: Any, limits: Limits | None = None
                             ) -> tuple[list[GenRequest], list[str], bool]:
    """(one request per prompt, the prompts' texts, echo) from a completions body; RequestError naming the field."""
    lim = limits or Limits()
    _refuse(body)
    given = prompts(body.get("prompt"), tokenizer)
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise RequestError(400, "'echo' must be true or false", "echo")
    logprobs = body.get("logprobs")
    k = number(body, "logprobs", 0, 0, 20, int) if logprobs is not None else 0
    longest = max(len(ids) for _, ids in given)
    room = max(0, lim.max_context_tokens - longest)
    max_tokens = number(body, "max_tokens", min(16, lim.max_new_tokens, room), 0, lim.max_new_tokens, int)
    n = number(body, "n", 1, 1, 16, int)
    budget(n, [len(ids) for _, ids in given], max_tokens, lim, "max_tokens", "prompt")
    settings = sampling(body)
    reqs = [GenRequest(prompt=text, prompt_ids=ids, n=n, max_tokens=max_tokens, **settings,
                       logprobs=logprobs is not None, top_logprobs=k, score_prompt=echo and logprobs is not None)
            for text, ids in given]
    return reqs, [text for text, _ in given], echo


def _logprobs(tok: Any, scores: list[Scored], k: int, start: int) -> dict[str, Any]:
    """The legacy ``logprobs`` object: tokens, their log-probabilities, the top ``k`` of each step (the chosen
    token always among them, as OpenAI does) and each token's character offset into the returned text."""
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for s in scores:
        text = tok.decode([s.id])
        out["tokens"].append(text)
        out["token_logprobs"].append(s.logprob)
        top = None
        if s.logprob is not None:
            top = {tok.decode([t]): lp for t, lp in s.top[:k]}
            top.setdefault(text, s.logprob)
        out["top_logprobs"].append(top)
        out["text_offset"].append(start)
        start += len(text)
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {key: a[key] + b[key] for key in a}


def _choice(tok: Any, r: GenRequest, choice: dict[str, Any], text: str, echo: bool) -> dict[str, Any]:
    head = text if echo else ""
    out = {"text": head + choice["message"]["content"], "index": 0, "logprobs": None,
           "finish_reason": choice["finish_reason"]}
    if r.logprobs:
        generated = _logprobs(tok, choice.get("_scores", []), r.top_logprobs, len(head))
        if echo:
            generated = _merge(_logprobs(tok, r.prompt_scores or [], r.top_logprobs, 0), generated)
        out["logprobs"] = generated
    return out


def completion_response(tok: Any, model_name: str, reqs: list[GenRequest], texts: list[str],
                        echo: bool) -> dict[str, Any]:
    """The ``text_completion`` object: choice ``p × n + j`` is the j-th completion of prompt p."""
    choices = []
    for r, text in zip(reqs, texts, strict=True):
        assert r.result is not None
        choices += [_choice(tok, r, c, text, echo) for c in r.result]
    for i, c in enumerate(choices):
        c["index"] = i
    n_in = sum(r.prompt_tokens for r in reqs)  # each prompt once, however many choices (as OpenAI counts)
    n_out = sum(c["_n_tokens"] for r in reqs for c in r.result or [])
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": model_name, "choices": choices, "system_fingerprint": None,
            "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}
