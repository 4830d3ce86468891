"""The command line: parses arguments, configures logging and calls the core."""

from zmqworkers.cli.main import main

__all__ = ["main"]
