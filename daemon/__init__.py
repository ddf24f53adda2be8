"""mlxd: MLX models behind Anthropic's Messages API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlxd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
