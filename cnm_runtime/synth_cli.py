"""Placeholder: this command lands with its issue."""
import sys


def main() -> None:
    sys.exit(f"{sys.argv[0]}: not implemented yet")
