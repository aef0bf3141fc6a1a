"""``sublim serve``: a local model over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

from sublim.backends.local.loading import load_model
from sublim.core.errors import SublimError
from sublim.serve import FaultPlan, make_server
from sublim.serve.server import CHAT, COMPLETIONS, FAULT_KINDS, JOBS, Limits
from sublim.train.precision import resolve_dtype, set_compute

FAULT_ROUTES = {"chat": CHAT, "completions": COMPLETIONS, "jobs": JOBS}
"""What ``--fault-routes`` names: chat completions, legacy completions, fine-tuning job creation."""


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def fault_routes(text: str) -> tuple[str, ...]:
    """``"chat,completions"`` (names or paths) → the paths of those routes; ArgumentTypeError naming the known."""
    known = {**FAULT_ROUTES, **{path: path for path in FAULT_ROUTES.values()}}
    names = [n.strip() for n in text.split(",")]
    if not all(n in known for n in names):
        raise argparse.ArgumentTypeError(f"{text!r}: name one or more of {', '.join(FAULT_ROUTES)} (or their "
                                         "paths), comma-separated")
    return tuple(dict.fromkeys(known[n] for n in names))


def add(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a local model over an OpenAI-compatible HTTP API")
    p.add_argument("model", help="catalog name, .gguf path or local model directory")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (loopback by default)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    p.add_argument("--name", default=None, help="model id clients send (default: the model argument)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the model runs")
    p.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"],
                   help="compute precision (default float32: served log-probabilities exact, as audits read "
                        "them; auto: bf16 where the device multiplies bf16 fast, as runs do; bf16 keeps the head "
                        "and log-softmax in float32)")
    p.add_argument("--max-batch", type=int, default=32, help="requests generated together at most")
    p.add_argument("--api-key-env", default=None, help="require the key held in this environment variable")
    p.add_argument("--faults", default="", metavar="KIND=RATE,…",
                   help=f"inject faults for client testing: {', '.join(FAULT_KINDS)} (e.g. 429=0.1,500=0.05)")
    p.add_argument("--fault-routes", default=(CHAT,), type=fault_routes, metavar="ROUTE,…",
                   help="POST routes faults go to, comma-separated: chat (chat completions, the default), "
                        "completions (legacy completions), jobs (fine-tuning job creation)")
    p.add_argument("--max-body-mb", type=float, default=1.0, help="largest request body (fine-tuning uploads: 64)")
    p.add_argument("--max-context", type=int, default=Limits().max_context_tokens,
                   help="prompt + completion tokens of one request (never more than the model's context)")
    p.add_argument("--generation-timeout", type=float, default=Limits().generation_s,
                   help="seconds one batch may generate for; no client holds the model longer")
    p.add_argument("--fault-seed", type=int, default=0, help="the seed of the injected faults' draws")
    p.add_argument("--slow-seconds", type=float, default=5.0, help="delay of a 'slow' fault")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> None:
    faults = FaultPlan.parse(args.faults, args.fault_seed, args.slow_seconds, args.fault_routes)
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise SublimError(f"--api-key-env {args.api_key_env} is not set in the environment: export it "
                              "or drop the option to serve without a key")
    if not 0 <= args.port <= 65535:
        raise SublimError(f"--port {args.port} is not a TCP port: give 0..65535 (0 picks a free one)")
    if args.max_batch < 1 or args.slow_seconds < 0:
        raise SublimError(f"--max-batch {args.max_batch} / --slow-seconds {args.slow_seconds:g}: give a batch of 1 "
                          "or more and a delay of 0 or more seconds")
    if args.max_body_mb <= 0 or args.max_context < 2 or args.generation_timeout <= 0:
        raise SublimError("--max-body-mb, --max-context and --generation-timeout must be positive (context >= 2)")
    limits = Limits(max_body_bytes=int(args.max_body_mb * (1 << 20)), max_context_tokens=args.max_context,
                    generation_s=args.generation_timeout)
    lm = load_model(args.model, args.device)
    set_compute(lm.model, resolve_dtype(args.dtype, next(lm.model.parameters()).device))
    name = args.name or args.model
    server = make_server(lm.model, lm.tokenizer, name, args.host, args.port, faults, key, args.max_batch, limits)
    port = server.server_address[1]
    # SIGINT and SIGTERM both stop it, also when started in the background (where a shell ignores SIGINT)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    print(f"serving {name} at http://{args.host}:{port}/v1 (chat completions, streamed or not; completions; "
          "models; fine-tuning); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
