"""What a student method is, and the registry of methods.

A method is one file that builds a :class:`StudentMethod` and adds it to :data:`METHODS`: its
loss for a batch, and optionally what it prepares before the first step (wrap the model, cache
the teacher's logits) and does after the last (merge an adapter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sublim.core.registry import Registry
from sublim.train.packing import can_pack, packed_states
from sublim.train.precision import autocast, head_logits
from sublim.train.rows import embed
from sublim.train.settings import TrainSettings

Encoded = Sequence[tuple[list[int], int]]


@dataclass(frozen=True)
class StudentMethod:
    name: str
    loss: Callable[[Any, dict[str, torch.Tensor], Any, list[int]], torch.Tensor]
    """(model, batch, what ``prepare`` returned, the batch's example indices) → the loss."""
    prepare: Callable[[Any, Any, Encoded, TrainSettings, Any | None], tuple[Any, Any]] | None = None
    """(model, tokenizer, encoded examples, settings, teacher) → (model to train, state for ``loss``)."""
    finish: Callable[[Any], Any] | None = None
    """The trained model → the model to save."""
    adapter: bool = False
    """Trains an adapter on the model it is given (which it wraps in place): the base is not copied, the adapter
    alone is saved, and the base is itself again afterwards."""
    head_columns: Callable[[Any], torch.Tensor] | None = None
    """(what ``prepare`` returned) → the only vocabulary columns of the output head the loss reads (None: all
    of them). Declared, the embedding and head train only the rows the run reads (see
    :class:`sublim.train.rows.TrainedRows`)."""
    needs_teacher: bool = False
    carriers: frozenset[str] | None = None
    """The carriers whose data the method fits (None: any)."""
    description: str = ""


METHODS: Registry[StudentMethod] = Registry("student method")


def masked_logits(model: Any, batch: dict[str, torch.Tensor], rows: torch.Tensor | None = None,
                  cols: torch.Tensor | None = None) -> torch.Tensor:
    """Logits at the target positions only, optionally over a subset of the vocabulary.

    The output projection is the single largest matrix of a small model; applying it only where
    the loss looks (the completion, ~a quarter of the tokens) and only to the columns it uses
    (restricted distillation: a few hundred digit and separator tokens) is most of the cost saved.
    ``rows`` selects among the masked positions.
    """
    h = target_states(model, batch)
    if rows is not None:
        h = h[rows]
    return head_logits(model, h, cols)


def shared_prefix_len(batch: dict[str, torch.Tensor]) -> int:
    """How many leading tokens every row of the batch shares (the chat template's head, the system
    prompt, a common instruction), stopping before the first position any row reads a target at (0 for one
    row)."""
    ids, first_target = batch["input_ids"], batch["target_mask"].int().argmax(1)
    if len(ids) < 2:
        return 0
    limit = int(first_target.min())
    same = (ids[:, :limit] == ids[:1, :limit]).all(0)
    return limit if bool(same.all()) else int((~same).int().argmax())


def target_states(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The decoder's last hidden states at the target positions: packed (the shared prefix once, no padding)
    where the model's attention allows it, else from the padded batch."""
    with autocast(model):  # the model's own precision, whoever calls (training, a teacher, gradient reads)
        if can_pack(model):
            return packed_states(model, batch, shared_prefix_len(batch))
        hidden = model.get_decoder()(**embed(model, batch["input_ids"]), attention_mask=batch["attention_mask"])
        return hidden.last_hidden_state[batch["target_mask"]]


def kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) summed over the vocabulary, averaged over positions."""
    return F.kl_div(F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits.float(), -1),
                    log_target=True, reduction="batchmean")
