"""The model side of ``sublim serve``: a parsed request (``GenRequest``: chat or legacy completions alike, as
token ids) and the worker whose two lanes batch requests into ``generate`` calls, score prompts in one forward
pass and hand streaming requests each step's tokens."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from transformers.generation.streamers import BaseStreamer

from sublim.backends.local.generation import cut_at_stop, decoder_states, sample, stop_ids
from sublim.serve.errors import RequestError
from sublim.serve.limits import Limits
from sublim.train.precision import head_logits

SCORE_SLICE = 256
"""Prompt positions whose full-vocabulary logits are held at once while scoring a prompt (memory stays flat)."""


class Scored(NamedTuple):
    """One token with its log-probability (None for a prompt's first token) and the step's top alternatives."""

    id: int
    logprob: float | None
    top: list[tuple[int, float]]


@dataclass
class GenRequest:
    """One prompt (already tokenized) and how to answer it: ``n`` choices of up to ``max_tokens`` tokens."""

    prompt: str
    prompt_ids: list[int]
    n: int
    max_tokens: int
    """0: nothing is generated (a completions request that only scores its prompt)."""
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    logprobs: bool
    top_logprobs: int
    score_prompt: bool = False
    """Also read the log-probability of every prompt token (completions with echo and logprobs)."""
    stream: queue.Queue[list[int] | None] | None = None
    """For streaming: each generation step's new token of every choice, then None when the result is ready."""
    done: threading.Event = field(default_factory=threading.Event)
    result: list[dict[str, Any]] | None = None
    prompt_scores: list[Scored] | None = None
    error: Exception | None = None
    prompt_tokens: int = 0

    key: tuple[Any, ...] = field(init=False)

    def __post_init__(self) -> None:
        self.prompt_tokens = len(self.prompt_ids)
        # sampled requests with a seed run alone, so the seed alone decides their output
        solo = uuid.uuid4().hex if (self.temperature > 0 and self.seed is not None) else None
        self.key = (self.max_tokens, self.temperature, self.top_p, self.logprobs, self.top_logprobs, solo)


class _RowStreamer(BaseStreamer):
    """Hands each generation step's tokens to the streaming requests of a batch (the first call is the prompt)."""

    def __init__(self, group: Sequence[GenRequest]) -> None:
        self.group, self.started = group, False

    def put(self, value: torch.Tensor) -> None:
        if not self.started:
            self.started = True
            return
        ids = value.view(-1).tolist()
        row = 0
        for r in self.group:
            if r.stream is not None:
                r.stream.put(ids[row:row + r.n])
            row += r.n

    def end(self) -> None:
        pass


def _padded(seqs: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span], mask[row, span] = torch.tensor(list(seq), dtype=torch.long), 1
    return ids, mask


def scored(logp: torch.Tensor, targets: torch.Tensor, k: int) -> list[Scored]:
    """Log-probability rows [N, vocabulary] and the token read at each: N tokens with their top ``k`` (at least 1)."""
    chosen = logp.gather(1, targets.view(-1, 1).to(logp.device)).squeeze(1).tolist()
    top = logp.topk(max(k, 1))
    return [Scored(t, c, list(zip(i, v, strict=True))) for t, c, i, v in
            zip(targets.tolist(), chosen, top.indices.tolist(), top.values.tolist(), strict=True)]


def step_scores(logits: Sequence[torch.Tensor], new: torch.Tensor, k: int) -> list[list[Scored]]:
    """Per row, per generation step: the chosen token's log-probability and the step's top ``k``; only the top of
    each step's log-softmax is kept, never a stack of full-vocabulary rows."""
    steps = [scored(step.float().log_softmax(-1), new[:, s], k) for s, step in enumerate(logits)]
    return [[step[b] for step in steps] for b in range(new.shape[0])]


class ModelWorker:
    """Two lanes share the model, each a queue and a thread that batches its requests by decoding settings:
    short requests (n × max_tokens up to ``Limits.short_request_tokens``) and long ones, so that a long request
    delays a short one by sharing the cores, never by holding the model until it is done."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 32, wait_s: float = 0.01,
                 limits: Limits | None = None) -> None:
        self.model, self.tok = model, tokenizer
        self.max_batch, self.wait_s = max_batch, wait_s
        self.limits = (limits or Limits()).for_model(model)
        self.device = next(model.parameters()).device
        self.lanes: dict[str, queue.Queue[GenRequest]] = {
            lane: queue.Queue(maxsize=self.limits.queue) for lane in ("short", "long")}
        self.stop_ids = stop_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        for lane, q in self.lanes.items():
            threading.Thread(target=self._loop, args=(q,), daemon=True, name=f"sublim-model-{lane}").start()

    def submit(self, req: GenRequest) -> None:
        """Queue a request in its lane; RequestError 503 when that lane's queue is full."""
        lane = "short" if req.n * req.max_tokens <= self.limits.short_request_tokens else "long"
        try:
            self.lanes[lane].put_nowait(req)
        except queue.Full:
            raise RequestError(503, f"server busy: {self.limits.queue} requests are waiting; retry later") from None

    def _loop(self, q: queue.Queue[GenRequest]) -> None:
        held: list[GenRequest] = []
        while True:
            if not held:
                held.append(q.get())
                time.sleep(self.wait_s)  # let concurrent requests arrive
            while True:
                try:
                    held.append(q.get_nowait())
                except queue.Empty:
                    break
            group: list[GenRequest] = []
            rest: list[GenRequest] = []
            for r in held:
                fits = r.key == held[0].key and sum(g.n for g in group) + r.n <= self.max_batch
                (group if fits or not group else rest).append(r)
            held = rest
            try:
                self._run(group)
            except Exception as exc:  # a failed batch fails its requests, never the server
                for r in group:
                    r.error = exc
            for r in group:
                r.done.set()
                if r.stream is not None:
                    r.stream.put(None)

    @torch.no_grad()
    def _run(self, group: list[GenRequest]) -> None:
        scoring = [r for r in group if r.score_prompt]
        if scoring:
            self._score_prompts(scoring)
        if group[0].max_tokens == 0:  # the prompt alone was asked for
            for r in group:
                r.result = [self._choice(i, [], None, r) for i in range(r.n)]
            return
        new, scores, timed_out = self._generate(group)
        row = 0
        for r in group:
            r.result = [self._choice(i, new[row + i].tolist(), scores[row + i] if scores else None, r, timed_out)
                        for i in range(r.n)]
            row += r.n

    def _generate(self, group: list[GenRequest]) -> tuple[torch.Tensor, list[list[Scored]] | None, bool]:
        """(new tokens per row, their scores if logprobs were asked for, whether the clock cut the batch)."""
        first = group[0]
        ids, mask = _padded([r.prompt_ids for r in group for _ in range(r.n)], self.pad_id, left=True)
        extra: dict[str, Any] = {"return_dict_in_generate": True, "output_logits": first.logprobs,
                                 "max_time": self.limits.generation_s}
        if any(r.stream is not None for r in group):
            extra["streamer"] = _RowStreamer(group)
        out = sample(self.model, ids.to(self.device), mask.to(self.device), max_new_tokens=first.max_tokens,
                     temperature=first.temperature, top_p=first.top_p, seed=first.seed, stop=self.stop_ids,
                     pad_id=self.pad_id, **extra)
        new = out.sequences[:, ids.shape[1]:].cpu()
        timed_out = new.shape[1] < first.max_tokens  # stopped before its length: every row ended, or time ran out
        return new, step_scores(out.logits, new, first.top_logprobs) if first.logprobs else None, timed_out

    def _score_prompts(self, reqs: list[GenRequest]) -> None:
        """Every prompt token's log-probability given the tokens before it: one forward pass over right-padded
        prompts (a causal model's real tokens never see the padding after them), the head applied in slices."""
        ids, mask = _padded([r.prompt_ids for r in reqs], self.pad_id, left=False)
        hidden, _ = decoder_states(self.model, ids.to(self.device), attention_mask=mask.to(self.device))
        for row, r in enumerate(reqs):
            scores = [Scored(r.prompt_ids[0], None, [])]
            for start in range(0, len(r.prompt_ids) - 1, SCORE_SLICE):
                stop = min(start + SCORE_SLICE, len(r.prompt_ids) - 1)
                logp = head_logits(self.model, hidden[row, start:stop]).log_softmax(-1)
                scores += scored(logp, ids[row, start + 1:stop + 1], r.top_logprobs)
            r.prompt_scores = scores

    def _choice(self, i: int, ids: list[int], scores: list[Scored] | None, r: GenRequest,
                timed_out: bool = False) -> dict[str, Any]:
        finish = "time_limit" if timed_out else "length"  # an unfinished answer: cut by the clock, or by max_tokens
        for pos, tid in enumerate(ids):
            if tid in self.stop_ids:
                ids, finish = ids[:pos], "stop"
                break
        text = self.tok.decode(ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, False, r.stop)
        finish = "stop" if stopped else finish
        choice: dict[str, Any] = {"index": i, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish, "logprobs": None, "_n_tokens": len(ids)}
        if scores is not None:
            choice["_scores"] = scores[:len(ids)]
            choice["logprobs"] = {"content": [self.token_entry(s, r.top_logprobs) for s in scores[:len(ids)]]}
        return choice

    def token_entry(self, s: Scored, k: int) -> dict[str, Any]:
        """A chat ``logprobs.content`` item: the token, its log-probability and bytes, its top ``k`` alternatives."""
        def entry(t: int, lp: float) -> dict[str, Any]:
            text = self.tok.decode([t])
            return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

        return {**entry(s.id, s.logprob if s.logprob is not None else 0.0),
                "top_logprobs": [entry(t, lp) for t, lp in s.top[:k]]}
