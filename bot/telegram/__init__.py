"""Telegram only: turn updates into service calls and results into messages."""
