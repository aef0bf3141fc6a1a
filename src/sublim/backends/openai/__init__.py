"""A model behind an OpenAI-compatible endpoint: the chat client, the retry policy, fine-tuning jobs."""

from sublim.backends.openai.backend import OpenAIBackend
from sublim.backends.openai.client import ChatJob, run_chat_jobs
from sublim.backends.openai.finetune import fine_tune
from sublim.backends.openai.retry import AmbiguousFailure, ApiError, RetryPolicy

__all__ = ["AmbiguousFailure", "ApiError", "ChatJob", "OpenAIBackend", "RetryPolicy", "fine_tune", "run_chat_jobs"]
