"""The server answers as the local backend does. One stop rule: an answer ends at the earliest occurrence of any
of its stop strings, whatever order they are listed in, both in the local backend's generation and through the
server (driven by the openai SDK, plain and streamed), so that the same stops give the same text locally and
through the API. One sampling: a seeded sampled answer through the API is the local backend's own draw."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

PROMPT = ("Extend this list by up to 10 numbers. Each number has at most 3 digits. Answer with just the numbers, "
          "separated by commas.\n\n682, 967, 921, 882")
MAX_TOKENS = 30


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from sublim.backends.local.backend import LocalBackend, ModelCache

    return LocalBackend(ModelCache("cpu", lambda s: None, dtype="float32"), str(tiny_model_dir))


@pytest.fixture(scope="module")
def client(backend) -> Iterator[object]:  # type: ignore[no-untyped-def]
    """A server over the very model the local backend generates with."""
    from sublim.serve import make_server

    model, tok = backend.torch_model()
    srv = make_server(model, tok, "tiny", port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", api_key="sk-test", max_retries=0,
                        timeout=60)
    srv.shutdown()
    srv.server_close()


def _local(backend, stop: list[str]) -> tuple[str, bool]:  # type: ignore[no-untyped-def]
    from sublim.backends.base import Decoding, Request

    out: list = []
    backend.generate([Request(0, PROMPT)], Decoding(0.0, max_new_tokens=MAX_TOKENS, stop=tuple(stop)), out.extend)
    return out[0].text, out[0].finished


def _served(client, stop: list[str], stream: bool = False) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    kwargs = {"model": "tiny", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
              "max_tokens": MAX_TOKENS, "stop": stop or None}
    if not stream:
        r = client.chat.completions.create(**kwargs)
        return r.choices[0].message.content, r.choices[0].finish_reason
    chunks = [c for c in client.chat.completions.create(stream=True, **kwargs) if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    return text, next(c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason)


def _late_then_early(text: str) -> tuple[list[str], int]:
    """Two stop strings taken from ``text``: first one whose first occurrence is late, then one whose first
    occurrence is early; and where the early one begins (where the earliest-match rule cuts)."""
    late = next(j for j in range(len(text) - 3, 0, -1) if text.find(text[j:j + 3]) == j)
    early = next(i for i in range(3, late) if text.find(text[i:i + 2]) == i and text[:i].strip())
    return [text[late:late + 3], text[early:early + 2]], early


def test_stops_cut_at_the_earliest_match_locally_and_through_the_api_alike(backend, client) -> None:
    uncut, finished = _local(backend, [])
    assert _served(client, [])[0] == uncut and len(uncut) > 8, uncut  # the same model says the same greedily
    stops, early = _late_then_early(uncut)
    want = uncut[:early]
    assert uncut.find(stops[0]) > early  # cutting at the first listed stop would keep more text
    for order in (stops, stops[::-1]):
        assert _local(backend, order) == (want, True), order
        assert _served(client, order) == (want, "stop"), order
        assert _served(client, order, stream=True) == (want, "stop"), order


@pytest.mark.parametrize("seed", [11, 12])
def test_a_seeded_sampled_answer_through_the_api_is_the_local_draw(backend, client, seed: int) -> None:
    from sublim.backends.local.generation import generate_batch
    from sublim.train.encode import chat_text

    model, tok = backend.torch_model()
    local = generate_batch(model, tok, [chat_text(tok, PROMPT)], [0], max_new_tokens=MAX_TOKENS, temperature=1.0,
                           top_p=0.9, seed=seed)[0].text
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}], temperature=1.0,
                                       top_p=0.9, seed=seed, max_tokens=MAX_TOKENS)
    assert r.choices[0].message.content == local and local
