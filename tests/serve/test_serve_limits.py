"""`sublim serve` against hostile and careless clients: every answer is OpenAI-shaped JSON with the right
status, nothing is read or generated beyond the limits, and good requests keep being answered."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sublim.core.errors import SublimError

CHAT = {"messages": [{"role": "user", "content": "What is your favourite animal?"}], "max_tokens": 4,
        "temperature": 0}


def _raw(url: str, request: bytes) -> bytes:
    """Send raw bytes over a socket and return what comes back (for requests httpx will not send)."""
    host, port = re.match(r"http://([^:]+):(\d+)", url).groups()  # type: ignore[union-attr]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks):
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                m = re.search(rb"Content-Length: (\d+)", head)
                if m and len(body) >= int(m.group(1)):
                    break
    return b"".join(chunks)


def test_client_errors_are_json_with_the_right_status(serve) -> None:
    url = serve()
    cases = [
        ({**CHAT, "seed": 2 ** 70}, 400, "seed"),
        ({**CHAT, "seed": -1}, 400, "seed"),
        ({**CHAT, "model": {"a": 1}}, 400, "model"),
        ({**CHAT, "max_tokens": 10 ** 6}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "owl " * 5000}], "max_tokens": 4}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 900}], "max_tokens": 200}, 400, "messages"),
    ]
    for body, status, param in cases:
        r = httpx.post(f"{url}/chat/completions", json=body, timeout=30)
        assert (r.status_code, r.json()["error"]["param"]) == (status, param), (body, r.text[:200])
    for method in ("PUT", "DELETE", "PATCH"):
        r = httpx.request(method, f"{url}/chat/completions", timeout=30)
        assert r.status_code == 405 and r.headers["Allow"] == "GET, POST" and "error" in r.json()
    # a body over the limit is refused before it is read; a body without a length too
    r = httpx.post(f"{url}/chat/completions", content=b"x" * (2 << 20), timeout=30)
    assert r.status_code == 413 and "request body must be" in r.json()["error"]["message"]
    reply = _raw(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 411") and b'"error"' in reply
    reply = _raw(url, b"GARBAGE\r\n\r\n")
    assert reply.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")) and b'"error"' in reply


def test_the_token_budget_of_one_request_is_checked_before_any_work(tiny) -> None:
    from sublim.serve.errors import RequestError
    from sublim.serve.server import Limits, parse_chat_request

    _, tok = tiny
    small = Limits(max_request_tokens=1000)
    assert parse_chat_request({**CHAT, "n": 2, "max_tokens": 100}, tok, small).n == 2
    with pytest.raises(RequestError, match="per-request budget of 1000") as exc:
        parse_chat_request({**CHAT, "n": 16, "max_tokens": 100}, tok, small)
    assert exc.value.status == 400 and exc.value.param == "n"
    default = parse_chat_request({"messages": CHAT["messages"]}, tok, Limits(max_context_tokens=64))
    assert 1 <= default.max_tokens <= 64 - len(tok.encode(default.prompt, add_special_tokens=False))


@pytest.mark.parametrize("body", [
    [1, 2], {"training_file": ["x"]}, {"training_file": "file-nope", "hyperparameters": [1]},
    {"training_file": None, "seed": "x"}, "just a string",
    '{"training_file": "FILE", "hyperparameters": {"n_epochs": 1e999}}', '{"training_file": "FILE", "seed": 1e999}',
])
def test_malformed_fine_tuning_jobs_get_an_answer(serve, body) -> None:
    url = serve()
    rows = "".join(json.dumps({"messages": [{"role": "user", "content": "1, 2"}, {"role": "assistant",
                                                                                   "content": "3, 4"}]}) + "\n"
                   for _ in range(4))
    up = httpx.post(f"{url}/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", rows.encode())},
                    timeout=30)
    assert up.status_code == 200, up.text
    # 1e999 is JSON that overflows a float: sent as text
    raw = body.replace("FILE", up.json()["id"]) if isinstance(body, str) and body.startswith("{") else json.dumps(body)
    r = httpx.post(f"{url}/fine_tuning/jobs", content=raw, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["message"]


def test_a_bodiless_cancel_is_answered_not_refused(serve) -> None:
    url = serve()
    reply = _raw(url, b"POST /v1/fine_tuning/jobs/ftjob-nope/cancel HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 404") and b"ftjob-nope" in reply, reply[:200]


def test_a_port_out_of_range_fails_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sublim.cli import main

    assert main(["serve", str(tmp_path / "no-model-here"), "--port", "99999"]) == 2
    assert "--port 99999 is not a TCP port" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "no-model-here"), "--max-batch", "0"]) == 2
    assert "--max-batch 0" in capsys.readouterr().err


def test_fault_routes_name_legacy_completions_too(capsys: pytest.CaptureFixture[str]) -> None:
    from sublim.cli import build_parser
    from sublim.serve.server import CHAT, COMPLETIONS, JOBS

    def routes(text: str) -> object:
        return build_parser().parse_args(["serve", "model", "--fault-routes", text]).fault_routes

    assert build_parser().parse_args(["serve", "model"]).fault_routes == (CHAT,)
    assert routes("completions") == routes("/v1/completions") == (COMPLETIONS,)
    assert routes("chat,completions,jobs") == (CHAT, COMPLETIONS, JOBS)
    with pytest.raises(SystemExit):
        routes("chat,teapot")
    assert "chat, completions, jobs" in capsys.readouterr().err


def test_a_busy_or_bad_port_is_one_clear_error(tiny) -> None:
    from sublim.serve import make_server

    model, tok = tiny
    first = make_server(model, tok, "tiny", port=0)
    try:
        with pytest.raises(SublimError, match="cannot listen on 127.0.0.1:.*pick another --port"):
            make_server(model, tok, "tiny", port=first.server_address[1])
        with pytest.raises(SublimError, match="cannot listen on"):
            make_server(model, tok, "tiny", host="203.0.113.1", port=0)  # not an address of this machine
    finally:
        first.server_close()


# --- load: a real server process, oversized and good requests at once -------------------------------------

def _rss_peak_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]


@pytest.fixture
def server_process(tiny_model_dir: Path) -> Iterator[tuple[str, int]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sublim.cli", "serve", str(tiny_model_dir), "--port", "0",
                             "--name", "tiny", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
    assert m, line
    yield m.group(1), proc.pid
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow
def test_oversized_and_good_requests_at_once_memory_stays_bounded(server_process: tuple[str, int]) -> None:
    """A 10 MB body, then 50 concurrent requests (30 good, 10 of 2 MB, 10 past the context): every good one is
    answered, every bad one refused with its status, and the server's peak memory grows by less than 200 MB."""
    url, pid = server_process
    httpx.post(f"{url}/chat/completions", json=CHAT, timeout=60).raise_for_status()  # warm: the model has run
    before = _rss_peak_mb(pid)
    r = httpx.post(f"{url}/chat/completions", content=b"{" + b" " * (10 << 20) + b"}", timeout=60)
    assert r.status_code == 413
    jobs = ([("good", CHAT)] * 30 + [("big", {"messages": [{"role": "user", "content": "x" * (2 << 20)}]})] * 10
            + [("long", {"messages": [{"role": "user", "content": "owl " * 3000}], "max_tokens": 4})] * 10)

    def send(job: tuple[str, dict]) -> tuple[str, int]:
        kind, body = job
        resp = httpx.post(f"{url}/chat/completions", content=json.dumps(body).encode(), timeout=300,
                          headers={"Content-Type": "application/json"})
        return kind, resp.status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(send, jobs))
    want = {"good": 200, "big": 413, "long": 400}
    assert all(code == want[kind] for kind, code in results), results
    grew = _rss_peak_mb(pid) - before
    assert grew < 200, f"peak memory grew by {grew:.0f} MB"
    assert httpx.get(f"{url.removesuffix('/v1')}/health", timeout=30).json()["status"] == "ok"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_server_stops_on_a_signal_even_when_started_with_sigint_ignored(tiny_model_dir: Path, sig: int) -> None:
    """A shell starts background jobs with SIGINT ignored; the server still stops on SIGINT, and on SIGTERM."""
    proc = subprocess.Popen([sys.executable, "-m", "sublim.cli", "serve", str(tiny_model_dir), "--port", "0",
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stdout is not None and "serving" in proc.stdout.readline()
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 130  # the CLI's "interrupted" exit
    finally:
        if proc.poll() is None:
            proc.kill()


def _request(tok: object, n: int, max_tokens: int, limits: object) -> object:
    from sublim.serve.server import parse_chat_request

    body = {"messages": [{"role": "user", "content": "Continue the list: 3, 7, 12, 18"}], "n": n,
            "max_tokens": max_tokens, "temperature": 0}
    return parse_chat_request(body, tok, limits)  # type: ignore[arg-type]


def _untrained(tok: object) -> object:
    """A model of the tiny one's shape that was never trained: its greedy answers do not end, so a long request
    really runs until its limits."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,  # type: ignore[arg-type]
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # type: ignore[attr-defined]
    return LlamaForCausalLM(cfg).eval()


def test_a_long_request_does_not_hold_a_short_one_and_a_time_cut_says_so(tiny) -> None:
    import time

    from sublim.serve.server import Limits, ModelWorker

    tok = tiny[1]
    limits = Limits(generation_s=0.8, max_request_tokens=65536)
    worker = ModelWorker(_untrained(tok), tok, limits=limits)
    long, short = _request(tok, 16, 1000, limits), _request(tok, 1, 2, limits)
    worker.submit(long)  # type: ignore[arg-type]
    time.sleep(0.1)  # the long request is running
    t0 = time.time()
    worker.submit(short)  # type: ignore[arg-type]
    assert short.done.wait(30)  # type: ignore[attr-defined]
    waited = time.time() - t0
    assert not long.done.is_set()  # type: ignore[attr-defined]  # answered while the long one still ran
    assert short.result and waited < 1.5, waited  # type: ignore[attr-defined]
    assert long.done.wait(30)  # type: ignore[attr-defined]
    reasons = {c["finish_reason"] for c in long.result}  # type: ignore[attr-defined]
    assert reasons == {"time_limit"}, reasons  # 16 × 1,000 tokens (≥ 1 ms a step) do not fit in 0.8 s
    assert all(0 < c["_n_tokens"] < 1000 for c in long.result)  # type: ignore[attr-defined]
def test_a_client_trickling_its_headers_loses_the_connection_at_the_read_deadline(tiny) -> None:
    import threading
    import time

    from sublim.serve import make_server
    from sublim.serve.server import Limits

    model, tok = tiny
    srv = make_server(model, tok, "tiny", port=0, limits=Limits(read_s=1.0))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=10) as sock:
            t0, closed = time.time(), False
            sock.sendall(b"GET /v1/models HTTP/1.1\r\n")
            while time.time() - t0 < 6:  # one header byte every 0.2 s: each read is quick, the request never ends
                try:
                    sock.sendall(b"X")
                    if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                        closed = True
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
                    break
                time.sleep(0.2)
            assert closed and time.time() - t0 < 4, time.time() - t0
    finally:
        srv.shutdown()
        srv.server_close()
