"""The batch jobs' stages behind an OpenAI-compatible HTTP API (``mmpipe serve``)."""
