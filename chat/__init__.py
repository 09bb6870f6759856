"""OpenAI-compatible chat client: cache, retries, cost budget (judges, translators)."""
