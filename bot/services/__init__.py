"""What the assistant does, independent of Telegram: reply, ingest, answer, summarize, train, switch models."""
