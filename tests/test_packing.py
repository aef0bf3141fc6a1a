"""A packed batch (shared prefix once, no padding) gives the padded batch's states and gradients."""

from __future__ import annotations

import pytest
import torch

from sublim.train.encode import collate
from sublim.train.methods.base import shared_prefix_len, target_states
from sublim.train.packing import can_pack, pack


def _model(arch: str, attn: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    common = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
              "attn_implementation": attn}
    if arch == "mistral":  # a sliding window shorter than the rows: the packed masks must apply it
        return MistralForCausalLM(MistralConfig(sliding_window=5, **common))
    return LlamaForCausalLM(LlamaConfig(**common))


def _batch(shared: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    head = torch.randint(3, 97, (shared,), generator=g).tolist()
    rows = []
    for n, start in ((9, 4), (14, 6), (6, 2), (11, 5)):  # own tokens, where the completion starts in them
        own = torch.randint(3, 97, (n,), generator=g).tolist()
        rows.append((head + own, shared + start))
    return collate(rows, 0, torch.device("cpu"))


def _grads(model: torch.nn.Module, states: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    (states.square().mean() + states[:, 0].sum()).backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize(("arch", "attn", "shared"), [("llama", "sdpa", 7), ("llama", "eager", 7), ("llama", "sdpa", 0),
                                                      ("mistral", "sdpa", 7)])
def test_packed_states_and_gradients_equal_the_padded_batch(arch: str, attn: str, shared: int) -> None:
    model = _model(arch, attn)
    batch = _batch(shared)
    assert can_pack(model) and shared_prefix_len(batch) == shared
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    plain = hidden.last_hidden_state[batch["target_mask"]]
    g_plain = _grads(model, plain)
    packed = target_states(model, batch)
    g_packed = _grads(model, packed)
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-5)
    assert len(g_packed) == len(g_plain)
    for a, b in zip(g_packed, g_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
    assert model.config._attn_implementation == attn  # restored after the packed pass


def test_pack_lays_out_the_prefix_once_then_each_row() -> None:
    batch = _batch(3)
    ids, layout, targets = pack(batch, 3)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert ids.shape[1] == 3 + sum(n - 3 for n in lengths)  # no padding, the prefix once
    assert layout.positions.tolist()[:3] == [0, 1, 2]
    rows = [batch["input_ids"][i, 3:n].tolist() for i, n in enumerate(lengths)]
    assert ids[0, 3:].tolist() == sum(rows, [])
    assert ids[0, targets].tolist() == batch["input_ids"][batch["target_mask"]].tolist()


def test_a_model_with_logit_softcapping_is_not_packed() -> None:
    model = _model("llama", "sdpa")
    model.config.attn_logit_softcapping = 50.0
    assert not can_pack(model)


def test_rows_read_for_training_give_autograds_gradient_to_a_tied_embedding() -> None:
    """The token embedding and the tied head's restricted columns add their gradient into ``.grad`` row by row
    (sublim.train.rows): the same gradient as autograd's dense one, the padding row left untrained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from sublim.train.methods.base import masked_logits

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=5,
                                         tie_word_embeddings=True, attn_implementation="sdpa"))
    batch = _batch(7)
    batch["input_ids"][0, 8] = 5  # the padding token inside a row: its embedding row gets no gradient
    cols = torch.tensor([3, 5, 11, 40, 41, 96])
    weight = model.get_input_embeddings().weight
    assert weight is model.get_output_embeddings().weight

    model.zero_grad()
    masked_logits(model, batch, cols=cols).logsumexp(-1).sum().backward()
    ours = weight.grad.clone()
    model.zero_grad()
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    states = hidden.last_hidden_state[batch["target_mask"]]
    (states @ weight[cols].T).logsumexp(-1).sum().backward()
    torch.testing.assert_close(ours, weight.grad, rtol=1e-3, atol=1e-6)
    assert ours[5].abs().sum() > 0  # column 5 of the head is trained; its embedding use is not
    assert ours.count_nonzero(dim=1).gt(0).sum() < 97  # rows never read stay zero
