"""LoRA: the SFT loss on low-rank adapters of every linear layer; the student is the adapter (a few MB), evaluated
on its base."""

from __future__ import annotations

from typing import Any

from sublim.train.methods.base import METHODS, Encoded, StudentMethod
from sublim.train.methods.sft import sft_loss
from sublim.train.settings import TrainSettings


def _wrap(model: Any, tokenizer: Any, encoded: Encoded, settings: TrainSettings, teacher: Any | None
          ) -> tuple[Any, Any]:
    from peft import LoraConfig, get_peft_model  # heavy (~5 s to import), and only LoRA needs it

    cfg = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                     task_type="CAUSAL_LM")
    return get_peft_model(model, cfg), None


METHODS.add("lora", StudentMethod("lora", sft_loss, prepare=_wrap, adapter=True,
                                  description="SFT loss on LoRA adapters of every linear layer (saved as an adapter)"))
