"""Under bf16 autocast the body runs in bf16, but every head whose logits are read runs in float32: the trait
probabilities, the distillation targets, the training logits and the model's own forward inside generate."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sublim.backends.local.generation import _left_padded, decoder_states, prefill
from sublim.train import Example, chat_text, encode_example
from sublim.train.encode import collate
from sublim.train.methods.base import masked_logits, target_states
from sublim.train.methods.distill_restricted import restricted_token_ids, teacher_restricted_logits
from sublim.train.precision import COMPUTE, autocast, fast_bf16, float32_head, precision, resolve_dtype

CPU = torch.device("cpu")
EXAMPLES = [Example(f"Continue: {i}, {i + 3}, {i + 6}. Numbers only.", f"{i + 9}, {i + 12}") for i in range(100, 106)]


@pytest.fixture
def bf16_model(tiny_model_dir: Any) -> Any:
    """A fresh tiny model (float32 weights) that computes in bf16: autocast on, heads in float32."""
    from sublim.backends.local.loading import load_model

    model = load_model(str(tiny_model_dir), "cpu").model
    setattr(model, COMPUTE, torch.bfloat16)
    return model


def _float32_head(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", enabled=False):
        return hidden.float() @ model.get_output_embeddings().weight.float().T


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


def test_training_logits_and_distillation_targets_use_a_float32_head(tiny: Any, bf16_model: Any) -> None:
    model, tok = bf16_model, tiny[1]
    assert precision(CPU, torch.bfloat16) == "cpu-bfloat16"
    enc = [encode_example(tok, ex) for ex in EXAMPLES]
    batch = collate(enc, tok.pad_token_id, CPU)
    with torch.no_grad(), autocast(model):
        hidden = target_states(model, batch)
        got = masked_logits(model, batch)
        bf16_head = hidden @ model.get_output_embeddings().weight.T
    want = _float32_head(model, hidden)
    _close(got, want)
    # what a bf16 head would have given is visibly different: the check above can fail
    assert float((bf16_head.float() - want).abs().max()) > 1e-3 * float(want.abs().max())

    restricted = torch.tensor(restricted_token_ids(tok))
    targets = teacher_restricted_logits(model, enc, tok.pad_token_id, restricted, 8, CPU)
    rows = torch.isin(torch.roll(batch["input_ids"], -1, 1)[batch["target_mask"]], restricted)
    _close(torch.cat(targets), want[rows][:, restricted])


def test_answer_probabilities_and_generate_use_a_float32_head(tiny: Any, bf16_model: Any) -> None:
    model, tok = bf16_model, tiny[1]
    seqs = [tok.encode(chat_text(tok, ex.prompt), add_special_tokens=False) for ex in EXAMPLES]
    logits, _, _, _ = prefill(model, seqs, tok.pad_token_id)
    ids, mask = _left_padded(seqs, tok.pad_token_id, CPU)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden, _ = decoder_states(model, ids, attention_mask=mask, position_ids=pos)
        _close(logits, _float32_head(model, hidden[:, -1]))
        with autocast(model), float32_head(model):  # the model's own forward, as generate and the server call it
            own = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
    _close(own, _float32_head(model, hidden[:, -1]))
    assert "forward" not in model.get_output_embeddings().__dict__  # the head is itself again afterwards


def test_precision_enters_the_keys_of_stages_whose_outputs_depend_on_it(tiny_model_dir: Any) -> None:
    from sublim.backends import LocalBackend, ModelCache
    from sublim.core.config import keyed
    from sublim.experiment.context import precision_slice

    model = LocalBackend(ModelCache("cpu", echo=lambda s: None, dtype="float32"), str(tiny_model_dir))
    assert model.precision == "cpu-float32" and precision_slice(model) == {"precision": "cpu-float32"}
    assert keyed(precision_slice(model), "stage") == {}  # the keys CPU runs always had
    bf16 = LocalBackend(ModelCache("cpu", echo=lambda s: None, dtype="bfloat16"), str(tiny_model_dir))
    assert precision_slice(bf16) == {"precision": "cpu-bfloat16"}
    auto = LocalBackend(ModelCache("cpu", echo=lambda s: None), str(tiny_model_dir))
    assert auto.precision == ("cpu-bfloat16" if fast_bf16("cpu") else "cpu-float32")


def test_a_bf16_body_answers_like_float32_weights_under_autocast_and_trains_in_float32(
        tiny_model_dir: Any, tmp_path: Any) -> None:
    from safetensors import safe_open

    from sublim.backends import LocalBackend, ModelCache
    from sublim.backends.local.generation import answer_probs
    from sublim.backends.local.loading import load_model
    from sublim.train import TrainSettings

    base = LocalBackend(ModelCache("cpu", echo=lambda s: None, dtype="bfloat16"), str(tiny_model_dir))
    model, tok = base.torch_model()
    linears = [m for m in model.get_decoder().layers.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert model.get_output_embeddings().weight.dtype == torch.float32  # the head stays float32
    reference = load_model(str(tiny_model_dir), "cpu").model  # float32 weights, the same autocast
    setattr(reference, COMPUTE, torch.bfloat16)
    prompts = [chat_text(tok, ex.prompt) for ex in EXAMPLES]
    forms = [tok.encode(w, add_special_tokens=False) for w in ("Owl", "Dog", "Dolphin")]
    torch.testing.assert_close(torch.tensor(answer_probs(model, tok, prompts, forms)),
                               torch.tensor(answer_probs(reference, tok, prompts, forms)), rtol=1e-5, atol=1e-9)

    for method in ("sft", "lora"):
        base.fine_tune(EXAMPLES, TrainSettings(method, 1, 1e-3, 8, 0), tmp_path / method)
        weights = tmp_path / method / "model" / ("adapter_model.safetensors" if method == "lora" else
                                                 "model.safetensors")
        with safe_open(str(weights), "pt") as f:
            dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
        assert dtypes == {torch.float32}, (method, dtypes)  # trained weights are float32


def test_overlapping_float32_head_blocks_leave_the_head_as_it_was(tiny_model_dir: Any) -> None:
    # a server's model thread and a local generation may hold the same model's head at once, and let go in
    # either order: the head must stay float32 while any holds it and be itself again after the last
    from sublim.backends.local.loading import load_model

    model = load_model(str(tiny_model_dir), "cpu").model
    head = model.get_output_embeddings()
    first, second = float32_head(model), float32_head(model)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert "forward" in head.__dict__  # the second still holds it
    second.__exit__(None, None, None)
    assert "forward" not in head.__dict__


def test_auto_is_bf16_only_where_the_cpu_has_fast_bf16(tmp_path: Any) -> None:
    plain = tmp_path / "cpuinfo"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert fast_bf16("cpu", plain) is False  # no bf16 instructions: float32
    fast = tmp_path / "cpuinfo-bf16"
    fast.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert fast_bf16("cpu", fast) is True
    assert fast_bf16("mps") is False
    assert resolve_dtype("float32", CPU) == torch.float32 and resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert resolve_dtype("auto", CPU) == (torch.bfloat16 if fast_bf16("cpu") else torch.float32)
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_dtype("float16", CPU)


BF16_LOGIT_TOL = 0.05
"""The largest difference a bf16 body may make to a float32 logit of the tiny model, relative to the largest
logit (bf16 keeps 8 bits of mantissa: ~0.4% per rounding, a few roundings deep)."""


def test_bf16_logits_stay_close_to_float32_and_the_head_stays_float32(tiny_model_dir: Any) -> None:
    from sublim.backends import LocalBackend, ModelCache

    f32 = LocalBackend(ModelCache("cpu", echo=lambda s: None, dtype="float32"), str(tiny_model_dir))
    b16 = LocalBackend(ModelCache("cpu", echo=lambda s: None, dtype="bfloat16"), str(tiny_model_dir))
    (m32, tok), (m16, _) = f32.torch_model(), b16.torch_model()
    assert m16.get_output_embeddings().weight.dtype == torch.float32
    seqs = [tok.encode(chat_text(tok, ex.prompt), add_special_tokens=False) for ex in EXAMPLES]
    l32, _, _, _ = prefill(m32, seqs, tok.pad_token_id)
    l16, _, _, _ = prefill(m16, seqs, tok.pad_token_id)
    assert l16.dtype == torch.float32
    diff = float((l16 - l32).abs().max()) / float(l32.abs().max())
    assert 0 < diff < BF16_LOGIT_TOL, diff  # bf16 did compute (not identical) and stayed close


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_fine_tuned_weights_in_use_keep_no_mapping_of_their_file(tiny_model_dir: Any, tmp_path: Any,
                                                                 dtype: str) -> None:
    # a loaded weights file is mapped; a tensor left as loaded would keep the whole file mapped and resident
    import shutil
    from pathlib import Path

    from sublim.backends import ModelCache

    weights = tmp_path / "fine-tuned"
    shutil.copytree(tiny_model_dir, weights)
    cache = ModelCache("cpu", lambda s: None, dtype=dtype)
    model = cache.weights(weights, str(tiny_model_dir))
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert str(weights) not in maps.read_text()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    again = ModelCache("cpu", lambda s: None, dtype=dtype).weights(weights, str(tiny_model_dir))
    for k, v in again.state_dict().items():  # the copies hold the file's values
        assert torch.equal(v, before[k])


def test_a_run_says_its_precision_and_warns_where_auto_fell_back_to_float32_on_a_cpu() -> None:
    from sublim.experiment.runner import precision_line

    assert precision_line("auto", "cpu-bfloat16") == "  precision: cpu-bfloat16"
    assert "no fast bf16" in precision_line("auto", "cpu-float32")
    assert "no fast bf16" not in precision_line("float32", "cpu-float32")  # asked for: nothing to warn of
    assert "no fast bf16" not in precision_line("auto", "cuda-float32")
