"""The docent command line: main.py builds the parser; each other module adds one group of subcommands."""
