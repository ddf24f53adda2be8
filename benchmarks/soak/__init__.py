"""The soak: concurrent clients mix every kind of request against one mlxd for a fixed time, then check that
none failed, nothing leaked and the server's memory stopped growing. `python -m benchmarks.soak --help`."""

from benchmarks.soak.cli import main

__all__ = ["main"]
