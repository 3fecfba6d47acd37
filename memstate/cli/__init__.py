"""The command line: a thin shell over the library (`memstate --help`)."""

from memstate.cli.main import main

__all__ = ["main"]
