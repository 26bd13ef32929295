"""Test support code: fakes of external services (the Telegram Bot API) shared by the test suites."""
