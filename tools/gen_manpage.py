"""Write vmsnapd(8) from the CLI's argparse parser with argparse-manpage (run at build time by packaging/install.sh).

Usage: PYTHONPATH=DIR_WITH_ARGPARSE_MANPAGE python tools/gen_manpage.py --version V --include FILE --output FILE
"""

from __future__ import annotations

import argparse
import sys

from argparse_manpage.cli import main as argparse_manpage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--version", required=True)
    parser.add_argument("--include", required=True, help="extra sections (argparse-manpage include format)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    sys.argv = [
        "argparse-manpage", "--module", "vmsnapd.cli", "--function", "build_parser", "--prog", "vmsnapd",
        "--project-name", "vmsnapd", "--version", args.version, "--manual-section", "8",
        "--manual-title", "System Administration",
        "--description", "consistent ZFS snapshots of running libvirt VMs, sanoid-compatible",
        "--include", args.include, "--output", args.output,
    ]
    argparse_manpage()


if __name__ == "__main__":
    main()
