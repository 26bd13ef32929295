"""Fine-tuning the chat model from what the bot has seen: the data (dataset), a plan sized to it (plan), the
child processes (runner), what a run reports (report), model versions (versions), and the TrainingService
that the admin handlers and the bot's start-up call (service)."""
