"""Student training: one loop (loop.py), one file per method (methods/), the chat encoding and the
precision policy that training and inference share."""

from sublim.train.encode import Example, chat_text, collate, encode_example
from sublim.train.loop import train_student
from sublim.train.methods import METHODS, StudentMethod
from sublim.train.settings import TrainSettings

__all__ = ["METHODS", "Example", "StudentMethod", "TrainSettings", "chat_text", "collate", "encode_example",
           "train_student"]
