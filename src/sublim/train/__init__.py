"""Student training: SFT (full, LoRA) and logit distillation (full and restricted vocabulary)."""

from sublim.train.students import Example, TrainSettings, restricted_token_ids, train_student

__all__ = ["Example", "TrainSettings", "restricted_token_ids", "train_student"]
