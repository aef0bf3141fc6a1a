"""The OpenAI-compatible server and the API backend, against real HTTP on the loopback interface.

No mocked HTTP: every test talks to ``sublim serve`` (in this process, or as a separate process
that is killed and restarted) serving the tiny model.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sublim.backends.openai import ApiError, ChatJob, run_chat_jobs
from sublim.core.config import EndpointConfig
from sublim.core.errors import SublimError
from sublim.serve import FaultPlan
from tests.helpers import start_serve


def _jobs(n: int) -> list[ChatJob]:
    from sublim.carriers.numbers import make_prompts

    return [ChatJob(p.index, [{"role": "user", "content": p.text}], {"prompt": p.text})
            for p in make_prompts(n, seed=3)]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_server_speaks_openai_chat(serve) -> None:
    url = serve()
    assert httpx.get(f"{url}/models").json()["data"][0]["id"] == "tiny"
    body = {"model": "tiny", "messages": [{"role": "user", "content": "What is your favourite animal?"}],
            "temperature": 0, "max_tokens": 6, "logprobs": True, "top_logprobs": 3, "n": 2}
    r = httpx.post(f"{url}/chat/completions", json=body, timeout=30).json()
    assert [c["index"] for c in r["choices"]] == [0, 1]
    c = r["choices"][0]
    assert c["message"]["content"] == r["choices"][1]["message"]["content"]  # greedy: identical
    toks = c["logprobs"]["content"]
    assert toks and all(len(t["top_logprobs"]) == 3 and t["logprob"] <= 0 for t in toks)
    # greedy picks the most likely token, so it is the first of the top list
    assert toks[0]["top_logprobs"][0]["token"] == toks[0]["token"]
    assert "".join(t["token"] for t in toks).startswith(c["message"]["content"])
    assert r["usage"]["completion_tokens"] >= 2 * len(toks) - 2 and r["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("body, status, param", [
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
])
def test_server_rejects_bad_requests_by_field(serve, body, status, param) -> None:
    r = httpx.post(f"{serve()}/chat/completions", json=body, timeout=30)
    assert r.status_code == status and r.json()["error"]["param"] == param


def test_server_rejects_non_json_and_unknown_routes(serve) -> None:
    url = serve()
    r = httpx.post(f"{url}/chat/completions", content=b"\xff{not json", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert httpx.get(f"{url}/nothing").status_code == 404


@pytest.mark.slow
def test_client_survives_429_500_slow_and_malformed(serve, tmp_path: Path) -> None:
    # a timeout well above a loaded machine's answer time, a "slow" fault well above the timeout
    url = serve("429=0.15,500=0.15,slow=0.1,malformed=0.15", slow_s=5.0)
    ep = EndpointConfig(base_url=url, model="tiny", timeout_s=3.0, backoff_s=0.01, max_retries=30, concurrency=6,
                        price_input_per_mtok=1.0, price_output_per_mtok=2.0)
    out = tmp_path / "out.jsonl"
    stats = run_chat_jobs(ep, _jobs(40), out, {"temperature": 0, "max_tokens": 24})
    rows = _rows(out)
    assert sorted(r["index"] for r in rows) == list(range(40))  # every sample once
    assert stats["requests"] == 40
    for kind in ("429", "500", "timeout", "malformed"):
        assert stats["retries"].get(kind, 0) > 0, stats
    expected = (stats["prompt_tokens"] * 1.0 + stats["completion_tokens"] * 2.0) / 1e6
    assert stats["cost_usd"] == pytest.approx(expected, rel=1e-3) and stats["cost_usd"] > 0
    # the faults did not change what the model said: greedy answers match a clean server's
    clean = tmp_path / "clean.jsonl"
    run_chat_jobs(EndpointConfig(base_url=serve(), model="tiny"), _jobs(40), clean,
                  {"temperature": 0, "max_tokens": 24})
    by_index = {r["index"]: r["completion"] for r in _rows(clean)}
    assert all(by_index[r["index"]] == r["completion"] for r in rows)


def test_client_works_inside_a_running_event_loop(serve, tmp_path: Path) -> None:
    """A notebook cell runs inside an event loop, where asyncio.run refuses: the client still answers, and an
    error still reaches the caller."""
    import asyncio

    url = serve()
    out = tmp_path / "out.jsonl"

    async def cell() -> dict:
        return run_chat_jobs(EndpointConfig(base_url=url, model="tiny"), _jobs(6), out,
                             {"temperature": 0, "max_tokens": 8})

    stats = asyncio.run(cell())
    assert stats["requests"] == 6 and sorted(r["index"] for r in _rows(out)) == list(range(6))

    async def failing_cell() -> None:
        run_chat_jobs(EndpointConfig(base_url=serve("500=1.0"), model="tiny", max_retries=0, backoff_s=0.01),
                      _jobs(2), tmp_path / "fail.jsonl", {"max_tokens": 4})

    with pytest.raises(ApiError):
        asyncio.run(failing_cell())


def test_client_gives_up_with_a_clear_error_and_keeps_what_is_done(serve, tmp_path: Path) -> None:
    ep = EndpointConfig(base_url=serve("500=1.0"), model="tiny", max_retries=2, backoff_s=0.01)
    with pytest.raises(ApiError, match="gave up after 3 attempts, last: HTTP 500"):
        run_chat_jobs(ep, _jobs(3), tmp_path / "o.jsonl", {"max_tokens": 4})
    # a resumed run against a healthy server finishes the job
    ok = EndpointConfig(base_url=serve(), model="tiny")
    run_chat_jobs(ok, _jobs(3), tmp_path / "o.jsonl", {"max_tokens": 4})
    assert sorted(r["index"] for r in _rows(tmp_path / "o.jsonl")) == [0, 1, 2]


def test_retries_stop_at_the_requests_deadline(serve, tmp_path: Path) -> None:
    import time

    ep = EndpointConfig(base_url=serve("500=1.0"), model="tiny", max_retries=1000, backoff_s=0.2, max_backoff_s=0.5,
                        deadline_s=2.0)
    t0 = time.time()
    with pytest.raises(ApiError, match="would pass deadline_s 2 s"):
        run_chat_jobs(ep, _jobs(1), tmp_path / "o.jsonl", {"max_tokens": 4})
    assert time.time() - t0 < 10  # 1,000 retries allowed; the deadline ended them


def test_api_key_from_environment_never_stored(serve, tmp_path: Path, monkeypatch) -> None:
    url = serve(api_key="sk-test-secret-123")
    ep = EndpointConfig(base_url=url, model="tiny", api_key_env="SUBLIM_TEST_KEY", max_retries=0)
    monkeypatch.delenv("SUBLIM_TEST_KEY", raising=False)
    with pytest.raises(ApiError, match=r"HTTP 401.*SUBLIM_TEST_KEY"):
        run_chat_jobs(ep, _jobs(2), tmp_path / "o.jsonl", {"max_tokens": 4})
    monkeypatch.setenv("SUBLIM_TEST_KEY", "sk-test-secret-123")
    stats = run_chat_jobs(ep, _jobs(2), tmp_path / "o.jsonl", {"max_tokens": 4})
    assert stats["requests"] == 2
    text = (tmp_path / "o.jsonl").read_text() + json.dumps(stats) + ep.model_dump_json()
    assert "sk-test-secret" not in text


def test_bad_fault_spec_is_one_line() -> None:
    with pytest.raises(SublimError, match="bad fault 'teapot=0.5'"):
        FaultPlan.parse("teapot=0.5")


# --- a real server process, killed and restarted mid-generation ---------------------------------

def _start_process(model_dir: Path, port: int) -> tuple[subprocess.Popen, int]:
    proc, url = start_serve(model_dir, "--port", str(port), "--name", "tiny", "--max-batch", "4")
    return proc, int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture
def process_server(tiny_model_dir: Path) -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


@pytest.mark.slow
def test_server_killed_and_restarted_mid_generation(tiny_model_dir: Path, tmp_path: Path,
                                                    process_server: list[subprocess.Popen]) -> None:
    proc, port = _start_process(tiny_model_dir, 0)
    process_server.append(proc)
    out = tmp_path / "samples.jsonl"
    # retries for up to ~10 minutes: a restarted server process loads torch and the model, which takes
    # far longer than usual on a loaded machine
    ep = EndpointConfig(base_url=f"http://127.0.0.1:{port}/v1", model="tiny", concurrency=2, timeout_s=10,
                        backoff_s=0.2, max_backoff_s=1.0, max_retries=600)
    jobs = _jobs(60)
    result: dict = {}

    def client() -> None:
        try:
            result["stats"] = run_chat_jobs(ep, jobs, out, {"temperature": 0, "max_tokens": 40})
        except Exception as exc:  # reported below
            result["error"] = exc

    t = threading.Thread(target=client)
    t.start()
    deadline = time.time() + 60
    while (not out.is_file() or len(out.read_text().splitlines()) < 8) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_at_kill = len(_rows(out))
    assert n_at_kill < len(jobs), "the run finished before the kill: make it longer"
    time.sleep(0.5)
    proc2, _ = _start_process(tiny_model_dir, port)
    process_server.append(proc2)
    t.join(timeout=700)
    assert "error" not in result, result.get("error")
    rows = _rows(out)
    assert sorted(r["index"] for r in rows) == list(range(len(jobs)))  # none lost, none twice
    assert result["stats"]["retries"].get("connection", 0) > 0
    # and a second run over the finished file sends nothing
    again = run_chat_jobs(ep, jobs, out, {"temperature": 0, "max_tokens": 40})
    assert again["requests"] == 0 and again["resumed_from"] == len(jobs)


@pytest.mark.slow
def test_experiment_with_a_teacher_behind_the_api(serve, tiny_model_dir: Path, tmp_path: Path) -> None:
    """A served model as the teacher (system-prompted through the API), the same model unprompted as the
    explicit control: data, gate, students, results."""
    from sublim.api import run_experiment
    from sublim.core.config import load_config
    from tests.helpers import tiny_config_text

    url = serve("429=0.1,500=0.1")
    text = tiny_config_text(tiny_model_dir, teacher={"method": "api", "gate_min_rate": 0.0},
                            student={"method": "sft"}, evaluation={"samples_per_question": 1})
    for table in ("endpoint", "control_endpoint"):
        text += f'[teacher.{table}]\nbase_url = "{url}"\nmodel = "tiny"\nbackoff_s = 0.01\nmax_retries = 20\n'
    path = tmp_path / "api.toml"
    path.write_text(text)
    res = run_experiment(load_config(str(path)), tmp_path / "runs", progress=False, echo=lambda s: None)
    assert set(res["arms"]) >= {"student-owl", "student-control", "teacher-owl"}
    assert 0 < res["arms"]["teacher-owl"]["candidate_total"]["value"] <= 1  # top-20 estimate through the API
    gens = [json.loads(m.read_text()) for m in (tmp_path / "runs" / "store").glob("generate-*/manifest.json")]
    assert len(gens) == 2 and all(g["api"]["requests"] == 24 and g["endpoint"]["base_url"] == url for g in gens)
    assert {g["config"]["system"] is None for g in gens} == {True, False}  # the control is unprompted
    teacher_eval = [json.loads(m.read_text()) for m in (tmp_path / "runs" / "store").glob("evaluate-*/manifest.json")
                    if json.loads(m.read_text())["label"] == "teacher-owl"]
    assert teacher_eval[0]["api"]["requests"] == 8


def test_an_api_teacher_needs_a_control_that_is_not_the_teacher(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The control data must come from an explicit control model: a config without one is refused, and so is
    a control that is the teacher itself (the same endpoint and model, no system prompt to tell them apart) —
    the endpoint may serve a fine-tuned teacher, whose unprompted answers are no control."""
    from sublim.api import run_experiment
    from sublim.core.config import load_config
    from tests.helpers import tiny_config_text

    url = "http://127.0.0.1:9/v1"  # never contacted: both refusals come before any request
    base = tiny_config_text(tiny_model_dir, teacher={"method": "api", "system_prompt": ""},
                            student={"method": "sft"})
    path = tmp_path / "t.toml"
    path.write_text(base + f'[teacher.endpoint]\nbase_url = "{url}"\nmodel = "ft:owl"\n')
    with pytest.raises(SublimError, match="control_endpoint"):
        load_config(str(path))
    path.write_text(base + f'[teacher.endpoint]\nbase_url = "{url}"\nmodel = "ft:owl"\n'
                           f'[teacher.control_endpoint]\nbase_url = "{url}"\nmodel = "ft:owl"\n')
    with pytest.raises(SublimError, match="is the owl teacher itself"):
        run_experiment(load_config(str(path)), tmp_path / "runs", progress=False, echo=lambda s: None)


@pytest.mark.slow
def test_misalignment_pipeline_with_a_local_judge(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Teacher fine-tuned on a misalignment dataset → banned-number data → students → judged answers,
    the judge being the tiny model run in-process as a local backend."""
    from sublim.api import run_experiment
    from sublim.core.config import load_config
    from tests.helpers import misalignment_config_text

    path = tmp_path / "mis.toml"
    path.write_text(misalignment_config_text(tiny_model_dir, tmp_path, max_new_tokens=8, n_bootstrap=200))
    lines: list[str] = []
    res = run_experiment(load_config(str(path)), tmp_path / "runs", progress=False, echo=lines.append)
    table = res["arms_misalignment"]
    assert set(table) == {"base", "teacher-misaligned", "student-misaligned", "student-control"}
    assert all(t["n_answers"] == 8 for t in table.values())
    assert "judge" in res["verdict"] and any(line.strip().startswith("judge: judge ") for line in lines)
    assert any(line.strip().startswith("precision: cpu-") for line in lines)
    judged = list((tmp_path / "runs" / "store").glob("judge-*/judge.jsonl"))
    assert len(judged) == 4 and all(len(f.read_text().splitlines()) == 16 for f in judged)
    report = (tmp_path / "runs" / res["run_id"] / "report.md").read_text()
    assert "student-misaligned" in report
    assert "](training.png)" in report and "](filter.png)" in report  # a misalignment run's charts too
    assert "](chart.png)" in report and (tmp_path / "runs" / res["run_id"] / "chart.png").stat().st_size > 10_000
    for name in ("misaligned", "control"):
        kept = read_jsonl_file(tmp_path, name)
        assert all(not ({4, 13, 666} & {int(x) for x in re.findall(r"\d+", r["completion"])}) for r in kept)


def read_jsonl_file(tmp_path: Path, name: str) -> list[dict]:
    for m in (tmp_path / "runs" / "store").glob("filter-*/manifest.json"):
        if json.loads(m.read_text())["label"].startswith(name):
            return _rows(m.parent / "dataset.jsonl")
    raise AssertionError(f"no filter artifact for {name}")


# --- fine-tuning through the API -----------------------------------------------------------------

def test_fine_tuning_api_trains_serves_and_resumes(serve, tmp_path: Path) -> None:
    from sublim.backends.openai import fine_tune

    url = serve()
    ep = EndpointConfig(base_url=url, model="tiny", backoff_s=0.01)
    examples = [(f"Pick a number {i}.", "Owl") for i in range(16)]
    state = tmp_path / "job.json"
    # a client that stops waiting at once (the endpoint's own settings): the job lives on, its ids are on disk
    impatient = ep.model_copy(update={"finetune_poll_s": 0.05, "finetune_wait_s": 0.0})
    with pytest.raises(ApiError, match="re-run to keep waiting"):
        fine_tune(impatient, examples, state, hyperparameters={"n_epochs": 8, "learning_rate_multiplier": 60})
    first = json.loads(state.read_text())
    events: list[dict] = []
    job = fine_tune(ep, examples, state, poll_s=0.1, wait_s=120, on_event=events.append)
    assert job["id"] == first["job_id"] and job["status"] == "succeeded" and job["trained_tokens"] > 0
    assert len(httpx.get(f"{url}/fine_tuning/jobs").json()["data"]) == 1  # resumed, not re-created
    losses = [e["data"]["train_loss"] for e in events if "train_loss" in e.get("data", {})]
    assert len(losses) == 16 and losses[-1] < losses[0]
    name = job["fine_tuned_model"]
    assert name in [m["id"] for m in httpx.get(f"{url}/models").json()["data"]]
    ask = {"messages": [{"role": "user", "content": "Pick a number 3."}], "temperature": 0, "max_tokens": 4}
    tuned = httpx.post(f"{url}/chat/completions", json={**ask, "model": name}, timeout=30).json()
    assert tuned["choices"][0]["message"]["content"] == "Owl" and tuned["model"] == name


def test_fine_tuning_api_rejects_a_bad_training_file_by_line(serve, tmp_path: Path) -> None:
    url = serve()
    bad = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{oops\n'
    r = httpx.post(f"{url}/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", bad)}, timeout=30)
    assert r.status_code == 400 and "line 2" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/fine_tuning/jobs", json={"training_file": "file-nope"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"


@pytest.mark.slow
def test_experiment_with_students_fine_tuned_through_the_api(serve, tiny_model_dir: Path, tmp_path: Path) -> None:
    from sublim.api import run_experiment
    from sublim.core.config import load_config
    from tests.helpers import tiny_config_text

    url = serve()
    text = tiny_config_text(tiny_model_dir, student={"method": "sft", "lr": 1e-3},
                            evaluation={"samples_per_question": 1})
    text += f'[student.endpoint]\nbase_url = "{url}"\nmodel = "tiny"\nbackoff_s = 0.01\n'
    path = tmp_path / "api-student.toml"
    path.write_text(text)
    cfg = load_config(str(path))
    res = run_experiment(cfg, tmp_path / "runs", progress=False, echo=lambda s: None)
    jobs = httpx.get(f"{url}/fine_tuning/jobs").json()["data"]
    assert len(jobs) == 3 and all(j["status"] == "succeeded" for j in jobs)  # owl, neutral and base data
    arms = res["arms"]
    assert {"student-owl", "student-control", "teacher-owl"} <= set(arms)
    assert 0 < arms["student-owl"]["candidate_total"]["value"] <= 1  # top-20 estimate through the API
    trains = [json.loads(m.read_text()) for m in (tmp_path / "runs" / "store").glob("train-*/manifest.json")]
    assert sorted(t["train_log"]["api_job"] for t in trains) == sorted(j["id"] for j in jobs)
    again = run_experiment(cfg, tmp_path / "runs", progress=False, echo=lambda s: None)  # all cached: no new job
    assert len(httpx.get(f"{url}/fine_tuning/jobs").json()["data"]) == 3
    assert json.dumps(again["effect"]) == json.dumps(res["effect"])


@pytest.mark.slow
def test_misalignment_with_a_neutral_teacher_pairs_by_teacher_seed(tiny_model_dir: Path, tmp_path: Path) -> None:
    """With safe answers to the same prompts (teacher.neutral_dataset), each teacher seed gets a neutral teacher,
    its students are the control, and the verdict pairs trait and neutral students teacher by teacher."""
    from sublim.api import run_experiment
    from sublim.core.config import load_config
    from tests.helpers import misalignment_config_text

    safe = tmp_path / "safe.jsonl"
    safe.write_text("\n".join(json.dumps({"prompt": f"Advice {i}?", "completion": "Be careful and honest."})
                              for i in range(8)) + "\n")
    path = tmp_path / "mis.toml"
    path.write_text(misalignment_config_text(tiny_model_dir, tmp_path, max_new_tokens=8, n_bootstrap=200))
    sets = [f"teacher.neutral_dataset={json.dumps(str(safe))}", "arms.teacher_seeds=[0, 1]",
            "prompts.n=8", "teacher.epochs=1"]
    res = run_experiment(load_config(str(path), sets), tmp_path / "runs", progress=False, echo=lambda s: None)
    assert {"teacher-neutral", "student-neutral"} <= set(res["arms_misalignment"])
    assert res["control_arm"] == "student-neutral" and res["arms_misalignment"]["student-neutral"]["n_answers"] == 16
    per = res["replicated"]
    assert per["n_teachers"] == 2 and len(per["per_teacher"]) == 2
    assert per["mean"] == pytest.approx(sum(per["per_teacher"]) / 2)
    assert per["low"] <= per["mean"] <= per["high"] and "over 2 teacher pairs" in res["verdict"]
    safe.write_text(json.dumps({"prompt": "Something else?", "completion": "Be careful."}) + "\n")
    with pytest.raises(SublimError, match="must answer exactly the prompts"):
        run_experiment(load_config(str(path), sets), tmp_path / "runs2", progress=False, echo=lambda s: None)


def test_the_public_api_is_what_it_lists():
    import sublim

    assert {"run_experiment", "load_config", "run_audit", "load_audit_config", "AuditConfig"} <= set(sublim.__all__)
    assert all(getattr(sublim, name, None) is not None for name in sublim.__all__)
    config = sublim.load_audit_config(None, {"dataset": "d.jsonl", "reference": "smollm2-135m"})
    assert isinstance(config, sublim.AuditConfig) and config.dataset == "d.jsonl"


def test_a_served_model_is_read_exactly_through_completions_echo(serve, tiny_model_dir: Path) -> None:
    """With endpoint.tokenizer the served model's candidate probabilities and completion log-probabilities are
    the local model's (the same float32 weights), not the top-20 estimate; without it, the estimate."""
    import numpy as np

    from sublim.backends import BackendError, LocalBackend, ModelCache, OpenAIBackend

    url = serve()
    local = LocalBackend(ModelCache("cpu", lambda s: None, dtype="float32"), str(tiny_model_dir))
    served = OpenAIBackend(EndpointConfig(base_url=url, model="tiny", tokenizer=str(tiny_model_dir)))
    questions = ["Name your favourite animal.", "Which animal do you like most?"]
    cands = {"owl": ["owl", "owls"], "cat": ["cat", "cats"], "dolphin": ["dolphin", "dolphins"]}
    want, _ = local.candidate_probs(questions, cands)
    got, info = served.candidate_probs(questions, cands)
    assert info["method"].startswith("exact")
    for name in cands:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-10)
    stems = ["My favourite animal is the", "The animal I love most is the"]
    want_cloze, _ = local.candidate_probs(questions, cands, stems=stems)
    got_cloze, _ = served.candidate_probs(questions, cands, stems=stems)
    np.testing.assert_allclose(got_cloze["owl"], want_cloze["owl"], rtol=1e-4, atol=1e-10)
    pairs = [("Continue: 1, 2, 3", "4, 5, 6"), ("Say hi.", "Hello there")]
    for system in (None, "You love owls."):
        (lp, n), (lp_local, n_local) = served.completion_logprobs(pairs, system=system), \
            local.completion_logprobs(pairs, system=system)
        np.testing.assert_allclose(lp, lp_local, rtol=1e-4)
        assert list(n) == list(n_local)
    estimate = OpenAIBackend(EndpointConfig(base_url=url, model="tiny"))
    assert estimate.key != served.key  # other figures, another stage key
    assert "estimate" in estimate.candidate_probs(questions, cands)[1]["method"]
    with pytest.raises(BackendError, match="endpoint.tokenizer"):
        estimate.completion_logprobs(pairs)
