"""Fine-tuning the chat model from what the bot has seen: data, plan, child processes, versions."""
