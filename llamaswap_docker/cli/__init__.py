"""Typer CLI: ``llamaswap-docker serve | config check | version``."""

from llamaswap_docker.cli.app import app, main

__all__ = ["app", "main"]
