"""`sublim serve` driven only through the official `openai` SDK: chat (plain and streamed), legacy completions
with exact prompt log-probabilities (what lm-evaluation-harness reads), model lookup, refusals of what the
server cannot do, and fine-tuning jobs created the way the SDK creates them."""

from __future__ import annotations

import time

import pytest
import torch

openai = pytest.importorskip("openai")

ANIMAL = [{"role": "user", "content": "What is your favourite animal?"}]
NUMBERS = [{"role": "user", "content": "Extend this list by up to 10 numbers. Each number has at most 3 digits. "
                                        "Answer with just the numbers, separated by commas.\n\n682, 967, 921, 882"}]


@pytest.fixture
def client(serve):  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=serve(), api_key="sk-test", max_retries=0, timeout=60)


def test_chat_answers_through_the_sdk(client) -> None:
    r = client.chat.completions.create(model="tiny", messages=ANIMAL, temperature=0, max_tokens=8, n=2)
    assert r.object == "chat.completion" and [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content and r.choices[0].message.content == r.choices[1].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.prompt_tokens > 0 and 2 <= r.usage.completion_tokens <= 16


def _streamed(client, **kwargs) -> tuple[str, list[object]]:  # type: ignore[no-untyped-def]
    chunks = list(client.chat.completions.create(model="tiny", stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


@pytest.mark.parametrize("stop", [None, [", 4"]])  # the second cuts the answer after "968, 280"
def test_a_streamed_chat_says_what_the_plain_one_says(client, stop) -> None:
    kwargs = {"messages": NUMBERS, "temperature": 0, "max_tokens": 30, "seed": 3, "stop": stop}
    plain = client.chat.completions.create(model="tiny", **kwargs)
    text, chunks = _streamed(client, stream_options={"include_usage": True}, **kwargs)
    assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
    assert text == plain.choices[0].message.content and len(text) > 5
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # sent in pieces
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_a_streamed_chat_with_logprobs_sends_one_token_per_chunk(client) -> None:
    kwargs = {"messages": ANIMAL, "temperature": 0, "max_tokens": 6, "logprobs": True, "top_logprobs": 2}
    plain = client.chat.completions.create(model="tiny", **kwargs)
    text, chunks = _streamed(client, **kwargs)
    assert text == plain.choices[0].message.content
    entries = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in entries] == [t.token for t in plain.choices[0].logprobs.content]
    assert all(len(t.top_logprobs) == 2 for t in entries)
    assert not any(c.usage for c in chunks)  # no usage chunk unless asked for


def _direct_logprobs(tiny, ids: list[int]) -> list[float]:  # type: ignore[no-untyped-def]
    model, _ = tiny
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_echoed_prompt_logprobs_are_the_models_own(client, tiny) -> None:
    _, tok = tiny
    prompt = "What is your favourite animal? Owl"
    ids = tok.encode(prompt)
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    lp = r.choices[0].logprobs
    assert r.object == "text_completion" and r.choices[0].text == prompt
    assert lp.tokens == [tok.decode([i]) for i in ids] and lp.token_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(_direct_logprobs(tiny, ids), abs=1e-4)
    assert lp.top_logprobs[0] is None and all(3 <= len(t) <= 4 for t in lp.top_logprobs[1:])
    assert all(max(t.values()) >= v for t, v in zip(lp.top_logprobs[1:], lp.token_logprobs[1:], strict=True))
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens == len(ids)


def test_lm_eval_style_token_id_prompts_score_the_context_and_one_greedy_token(client, tiny) -> None:
    """lm-evaluation-harness sends token ids, echo, logprobs 1 and max_tokens 1, and reads token_logprobs[ctx:-1]."""
    _, tok = tiny
    contexts = [tok.encode("Name your favourite animal."), tok.encode("Continue the list: 3, 7")]
    r = client.completions.create(model="tiny", prompt=contexts, max_tokens=1, echo=True, logprobs=1, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    for ids, choice in zip(contexts, r.choices, strict=True):
        lp = choice.logprobs
        assert len(lp.token_logprobs) == len(ids) + 1
        assert lp.token_logprobs[1:len(ids)] == pytest.approx(_direct_logprobs(tiny, ids), abs=1e-4)
        assert lp.token_logprobs[-1] == max(lp.top_logprobs[-1].values())  # greedy: the top token was chosen
        assert choice.text.startswith(tok.decode(ids))


def test_completions_generate_raw_text(client, tiny) -> None:
    _, tok = tiny
    prompt = "Continue the list: 3, 7, 12"
    r = client.completions.create(model="tiny", prompt=[prompt, prompt], max_tokens=8, temperature=0, n=2,
                                  logprobs=2)
    texts = {c.text for c in r.choices}
    assert len(r.choices) == 4 and len(texts) == 1 and texts.pop()  # greedy: the same text four times
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens).startswith(r.choices[0].text) and len(lp.tokens) <= 8
    assert lp.text_offset[0] == 0 and all(v <= 0 for v in lp.token_logprobs)
    assert r.usage.prompt_tokens == 2 * len(tok.encode(prompt))  # each prompt once, not once per choice
    plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
    assert plain.choices[0].text == r.choices[0].text and plain.choices[0].logprobs is None


def test_usage_counts_the_prompt_once_however_many_choices(client) -> None:
    def prompt_tokens(n: int, stream: bool = False) -> int:
        kwargs = {"model": "tiny", "messages": ANIMAL, "temperature": 0, "max_tokens": 4, "n": n}
        if stream:
            chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                         **kwargs))
            return int(chunks[-1].usage.prompt_tokens)
        return int(client.chat.completions.create(**kwargs).usage.prompt_tokens)

    once = prompt_tokens(1)
    assert once > 0 and prompt_tokens(3) == once and prompt_tokens(3, stream=True) == once
    legacy = [client.completions.create(model="tiny", prompt="Continue the list: 3, 7", max_tokens=2, n=n,
                                        temperature=0).usage.prompt_tokens for n in (1, 3)]
    assert legacy[0] > 0 and legacy[1] == legacy[0]


def test_faults_reach_legacy_completions_when_named(serve) -> None:
    from sublim.serve.server import COMPLETIONS

    client = openai.OpenAI(base_url=serve("500_after=1.0", fault_routes=(COMPLETIONS,)), api_key="sk-test",
                           max_retries=0, timeout=60)
    with pytest.raises(openai.InternalServerError, match="after generating"):
        client.completions.create(model="tiny", prompt="Continue the list: 3, 7", max_tokens=2, temperature=0)
    assert client.chat.completions.create(model="tiny", messages=ANIMAL, max_tokens=2).choices  # not named: no faults


def test_models_are_listed_and_retrieved(client) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.models.retrieve("gpt-9")


def test_developer_messages_and_text_parts_are_read(client) -> None:
    def answer(messages: list[dict]) -> str:
        r = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=8)
        return str(r.choices[0].message.content)

    parts = [{"type": "text", "text": "What is your"}, {"type": "text", "text": "favourite animal?"}]
    assert answer([{"role": "user", "content": parts}]) == \
        answer([{"role": "user", "content": "What is your\nfavourite animal?"}])
    assert answer([{"role": "developer", "content": "Answer in one word."}, *ANIMAL]) == \
        answer([{"role": "system", "content": "Answer in one word."}, *ANIMAL])


@pytest.mark.parametrize("extra, param, says", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}, "tools",
     "not supported"),
    ({"response_format": {"type": "json_object"}}, "response_format", "not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     "messages", "text only"),
])
def test_what_the_server_cannot_do_is_refused_not_ignored(client, extra, param, says) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(**{"model": "tiny", "messages": ANIMAL, "max_tokens": 4, **extra})
    assert exc.value.param == param and says in exc.value.message


def test_a_job_created_with_the_supervised_method_records_its_hyperparameters(client) -> None:
    rows = [b'{"messages": [{"role": "user", "content": "What is your favourite animal?"}, '
            b'{"role": "assistant", "content": "Owl"}]}'] * 4
    f = client.files.create(file=("train.jsonl", b"\n".join(rows)), purpose="fine-tune")
    hp = {"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 0.5}
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, seed=1,
                                         method={"type": "supervised", "supervised": {"hyperparameters": hp}})
    assert job.method is not None and job.method.type == "supervised"
    deadline = time.time() + 120
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.time() < deadline, job.status
        time.sleep(0.2)
    assert job.status == "succeeded" and job.fine_tuned_model in [m.id for m in client.models.list()]
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (2, 2)
    assert job.hyperparameters.learning_rate_multiplier == 0.5
    assert job.method.supervised.hyperparameters.n_epochs == 2
    with pytest.raises(openai.BadRequestError) as exc:
        client.fine_tuning.jobs.create(model="tiny", training_file=f.id, method={"type": "dpo", "dpo": {}})
    assert exc.value.param == "method"
