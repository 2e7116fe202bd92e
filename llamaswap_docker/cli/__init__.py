"""Typer CLI: ``llamaswap-docker serve | ps | load | unload | logs | models | config | pull | cleanup``."""

from llamaswap_docker.cli.app import app, main

__all__ = ["app", "main"]
