"""The paths of the API, as clients send them."""

from __future__ import annotations

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
FILES = "/v1/files"
HEALTH = "/health"
JOBS = "/v1/fine_tuning/jobs"
MODELS = "/v1/models"
