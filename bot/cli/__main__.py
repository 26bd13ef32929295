"""The docent command: `python -m bot.cli` runs it as `docent` does."""

import sys

from bot.cli.main import main

sys.exit(main())
