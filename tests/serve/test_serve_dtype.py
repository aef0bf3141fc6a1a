"""`sublim serve --dtype`: the served model computes in the precision asked for (float32 by default, so served
log-probabilities are exact), with the head and log-softmax in float32 under bf16."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import start_serve

PROMPT = "Continue the list: 3, 7, 12, 18, 25, 33"


def _prompt_logprobs(model_dir: Path, *dtype: str) -> list[float]:
    proc, url = start_serve(model_dir, "--port", "0", "--name", "tiny", *dtype)
    try:
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 0, "echo": True, "logprobs": 1}
        r = httpx.post(f"{url}/completions", json=body, timeout=60)
        r.raise_for_status()
        return [x for x in r.json()["choices"][0]["logprobs"]["token_logprobs"] if x is not None]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_bf16_serving_differs_from_float32_by_rounding_only(tiny_model_dir: Path) -> None:
    default = _prompt_logprobs(tiny_model_dir)
    f32 = _prompt_logprobs(tiny_model_dir, "--dtype", "float32")
    bf16 = _prompt_logprobs(tiny_model_dir, "--dtype", "bfloat16")
    assert default == f32  # the default is float32: exact
    diff = np.abs(np.array(bf16) - np.array(f32))
    assert len(bf16) == len(f32) > 5
    assert diff.max() > 0, "--dtype bfloat16 computed exactly what float32 did: the setting was not applied"
    assert diff.max() < 0.25, diff  # bf16 rounding of the body, not another model
