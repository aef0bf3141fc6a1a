"""The fixtures the tests share: the tiny chat model (built once per session by :mod:`tests.helpers`), it loaded,
and an in-process server on it."""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one thread per worker (and its subprocesses), not two
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402

from tests.helpers import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a saved tiny chat model (config.json, safetensors, tokenizer)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path) -> tuple[object, object]:
    """(model, tokenizer) of the tiny chat model, loaded through the package's loader."""
    from sublim.backends.local.loading import load_model

    lm = load_model(str(tiny_model_dir), "cpu")
    return lm.model, lm.tokenizer


@pytest.fixture
def serve(tiny):  # type: ignore[no-untyped-def]
    """Start an in-process server on a free port: serve(faults=..., api_key=...) → base URL."""
    import threading

    from sublim.serve import FaultPlan, make_server
    from sublim.serve.server import CHAT

    servers = []

    def start(faults: str = "", api_key: str | None = None, slow_s: float = 2.0,
              fault_routes: tuple[str, ...] = (CHAT,)) -> str:
        model, tok = tiny
        srv = make_server(model, tok, "tiny", port=0, faults=FaultPlan.parse(faults, 0, slow_s, fault_routes),
                          api_key=api_key)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/v1"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()
