"""Command line: ``python -m mlstm_kernels check`` (also installed as ``mlstm-kernels check``)."""

from __future__ import annotations

import sys

USAGE = """usage: mlstm-kernels <command> [options]

commands:
  check     run every kernel available on this machine against the float64 reference
            (forward, last states, all gradients) and print a PASS/FAIL table
  version   print the version and what this build of the core supports
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "check":
        from .check import main as check_main

        return check_main(rest)
    if command == "version":
        from . import __version__, capabilities

        print(__version__)
        for key, value in capabilities().items():
            print(f"  {key}: {value}")
        return 0
    print(f"unknown command '{command}'\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
