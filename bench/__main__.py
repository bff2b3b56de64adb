"""Command line: `python -m bench` runs every figure and prints one Markdown table."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
import time
from importlib import metadata

from bench.figures import FIGURES, Figure
from bench.loopback import install_guard
from bench.scale import FULL, SMOKE, Scale
from bench.table import RATE_NOTE, Row, render


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    install_guard()

    selected = [figure for figure in FIGURES if not args.only or figure.number in args.only]
    scale = SMOKE if args.smoke else FULL

    print(machine_description())
    print()
    started = time.perf_counter()
    rows = asyncio.run(_run(selected, scale))
    elapsed = time.perf_counter() - started

    print(render(rows))
    print()
    print("Ratio: how many times better the product is than the naive pattern (below 1: the product loses).")
    print(RATE_NOTE)
    print(f"Total run time: {elapsed:.0f} s{' (smoke scale)' if args.smoke else ''}.")
    return 0


async def _run(figures: list[Figure], scale: Scale) -> list[Row]:
    rows: list[Row] = []
    for figure in figures:
        figure_started = time.perf_counter()
        print(f"figure {figure.number}: {figure.title} ...", file=sys.stderr, flush=True)
        rows += await figure.run(scale)
        print(f"figure {figure.number}: done in {time.perf_counter() - figure_started:.1f} s", file=sys.stderr, flush=True)
    return rows


def machine_description() -> str:
    """Describe the cores, CPU model, Python, OS and key package versions, one per line."""
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("livekit-agents", "aiohttp"))
    return "\n".join(
        [
            f"- Cores: {os.cpu_count()} ({_cpu_model()})",
            f"- Python: {platform.python_version()} ({platform.python_implementation()})",
            f"- OS: {_os_name()}, kernel {platform.release()}",
            f"- Packages: {versions}",
        ]
    )


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release()["PRETTY_NAME"]
    except (OSError, KeyError):
        return platform.system()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the product against the naive patterns. Every server runs on 127.0.0.1.",
    )
    parser.add_argument(
        "--only",
        type=_figure_numbers,
        default=[],
        help="comma-separated figure numbers to run, such as 1,3 (default: all six)",
    )
    parser.add_argument("--smoke", action="store_true", help="run a few iterations of each figure only")
    parser.add_argument(
        "--log-level",
        default="ERROR",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="level of the product's and the framework's log lines on stderr (default: %(default)s)",
    )
    return parser


def _figure_numbers(text: str) -> list[int]:
    numbers = []
    for part in filter(None, (item.strip() for item in text.split(","))):
        if not part.isdigit() or not 1 <= int(part) <= len(FIGURES):
            raise argparse.ArgumentTypeError(f"invalid figure {part!r}: expected numbers from 1 to {len(FIGURES)}")
        numbers.append(int(part))
    return numbers


if __name__ == "__main__":
    sys.exit(main())
