"""llamaswap-docker: a Docker-native model-swapping proxy for local LLM servers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llamaswap-docker")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
