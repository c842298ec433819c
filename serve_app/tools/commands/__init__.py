"""Subcommands of the `aladdin` CLI: each module has `register(subparsers)`."""
