"""`python -m llamaswap_docker` runs the CLI."""

from llamaswap_docker.cli import main

if __name__ == "__main__":
    main()
