"""docent's application layer: Telegram front end, services, persistence and documents."""
