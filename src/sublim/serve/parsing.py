"""Request bodies of ``sublim serve`` checked against the limits before any model work: chat completions and
legacy completions become ``GenRequest`` objects; anything the server cannot honour is a 400 naming the field
and saying what to send instead, never silently ignored."""

from __future__ import annotations

from typing import Any

from sublim.serve.errors import RequestError
from sublim.serve.limits import Limits
from sublim.serve.worker import GenRequest

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""Chat roles the server reads, and what each becomes (``developer`` is the newer name of ``system``)."""
MAX_PROMPTS = 64
"""Prompts of one completions request at most (each is a request of its own to the worker)."""


def number(body: dict[str, Any], name: str, default: float, lo: float, hi: float, kind: type = float) -> Any:
    """``body[name]`` (``default`` when absent or null) as ``kind`` within [lo, hi]; RequestError otherwise."""
    v = body.get(name, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi or (kind is int and int(v) != v):
        raise RequestError(400, f"'{name}' must be a {kind.__name__} in [{lo}, {hi}], got {v!r}", name)
    return kind(v)


def sampling(body: dict[str, Any]) -> dict[str, Any]:
    """temperature, top_p, seed and stop, as chat and completions share them."""
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, "'stop' must be a string or a list of non-empty strings", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
        raise RequestError(400, "'seed' must be an integer from 0 to 2^63 - 1", "seed")
    return {"temperature": number(body, "temperature", 1.0, 0, 2), "top_p": number(body, "top_p", 1.0, 1e-6, 1),
            "seed": seed, "stop": stop[:4]}


def streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage) from ``stream`` and ``stream_options``."""
    stream, options = body.get("stream", False), body.get("stream_options")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", "stream")
    if options is None:
        return stream, False
    if not stream:
        raise RequestError(400, "'stream_options' is only allowed with \"stream\": true", "stream_options")
    usage = options.get("include_usage", False) if isinstance(options, dict) else None
    if not isinstance(usage, bool):
        raise RequestError(400, "'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
    return stream, usage


def budget(n: int, prompt_tokens: list[int], max_tokens: int, lim: Limits, tokens_field: str, what: str) -> None:
    """Each prompt plus ``max_tokens`` fits the context, and n × (prompt + max_tokens), over all prompts, fits the
    per-request budget."""
    for p in prompt_tokens:
        if p + max_tokens > lim.max_context_tokens:
            raise RequestError(400, f"the prompt has {p} tokens and {tokens_field} is {max_tokens}: together more than "
                                    f"this model's {lim.max_context_tokens}-token context; shorten the {what} or "
                                    f"lower {tokens_field}", what)
    total = n * sum(p + max_tokens for p in prompt_tokens)
    if total > lim.max_request_tokens:
        raise RequestError(400, f"n × (prompt + {tokens_field}) = {total} tokens is over the per-request budget of "
                                f"{lim.max_request_tokens}: lower n or {tokens_field}", "n")


def refuse_tools(body: dict[str, Any]) -> None:
    """Tool calling and structured output are not done here: say so rather than answer as if they were."""
    for name in ("tools", "functions"):
        if body.get(name) not in (None, []):
            raise RequestError(400, f"'{name}' is not supported: this server does not call tools or functions; "
                                    f"remove '{name}' and describe the tool in a message if the model should know it",
                               name)
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none"):
            raise RequestError(400, f"'{name}' is not supported: this server does not call tools; remove it", name)
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise RequestError(400, f"response_format {kind!r} is not supported: this server generates free text only; "
                                "remove response_format or send {\"type\": \"text\"}", "response_format")


def _content(content: Any, i: int) -> str:
    """A message's content: a string, or a list of text parts (joined by newlines)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise RequestError(400, f"messages[{i}].content must be a string or a non-empty list of text parts "
                                "[{\"type\": \"text\", \"text\": ...}]", "messages")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise RequestError(400, f"messages[{i}].content[{j}] is a {kind!r} part: this server reads text only; "
                                    "send {\"type\": \"text\", \"text\": ...} parts or a string", "messages")
        texts.append(part["text"])
    return "\n".join(texts)


def chat_messages(msgs: Any) -> list[dict[str, str]]:
    """{role, content} with string content, ``developer`` read as ``system``."""
    if not isinstance(msgs, list) or not msgs:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content}", "messages")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or m["role"] not in ROLES:
            role = m.get("role") if isinstance(m, dict) else None
            raise RequestError(400, f"messages[{i}] has role {role!r}: use system, developer, user or assistant "
                                    "(tool messages are not supported)", "messages")
        clean.append({"role": ROLES[m["role"]], "content": _content(m.get("content"), i)})
    return clean


def _supports_system(tokenizer: Any) -> bool:
    tmpl = getattr(tokenizer, "chat_template", "") or ""
    return "system" in tmpl


def chat_prompt(clean: list[dict[str, str]], tokenizer: Any, lim: Limits) -> str:
    """The chat template over the messages (a system message folded into the first user turn when the template
    has no system role)."""
    if clean[0]["role"] == "system" and not _supports_system(tokenizer):
        clean = [{"role": "user", "content": clean[0]["content"] + "\n\n" + clean[1]["content"]}] + clean[2:] \
            if len(clean) > 1 else [{"role": "user", "content": clean[0]["content"]}]
    chars = sum(len(m["content"]) for m in clean)
    if chars > 16 * lim.max_context_tokens:  # no tokenizer makes fewer tokens than this many characters allow
        raise RequestError(400, f"the messages hold {chars} characters, far more than the {lim.max_context_tokens}-"
                                "token context: shorten them", "messages")
    try:
        return str(tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=True))
    except Exception as exc:
        raise RequestError(400, f"the chat template rejected these messages: {str(exc)[:200]}", "messages") from None


def parse_chat_request(body: dict[str, Any], tokenizer: Any, limits: Limits | None = None) -> GenRequest:
    """Validate an OpenAI chat-completions body against ``limits``; raise RequestError naming the bad field."""
    lim = limits or Limits()
    streaming(body)
    refuse_tools(body)
    prompt = chat_prompt(chat_messages(body.get("messages")), tokenizer, lim)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    tokens_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    room = lim.max_context_tokens - len(ids)
    if room < 1:
        raise RequestError(400, f"the prompt has {len(ids)} tokens: no room left in this model's "
                                f"{lim.max_context_tokens}-token context; shorten the messages", "messages")
    max_tokens = number(body, tokens_field, min(256, lim.max_new_tokens, room), 1, lim.max_new_tokens, int)
    n = number(body, "n", 1, 1, 16, int)
    budget(n, [len(ids)], max_tokens, lim, tokens_field, "messages")
    logprobs = body.get("logprobs", False)
    if not isinstance(logprobs, bool):
        raise RequestError(400, "'logprobs' must be true or false", "logprobs")
    return GenRequest(prompt=prompt, prompt_ids=ids, n=n, max_tokens=max_tokens, **sampling(body), logprobs=logprobs,
                      top_logprobs=number(body, "top_logprobs", 0, 0, 20, int) if logprobs else 0)
