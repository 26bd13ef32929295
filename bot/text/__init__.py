"""Text algorithms with no model, no SQL and no Telegram, which the use cases in bot/services call: question
typing and the names a question asks about (questions), evidence sentences scored against a question
(evidence), the support check of a written text against its source (support) and invented source lines in a chat
reply (reply_text). Sentences and windows of a document are bot.documents.chunk's."""
