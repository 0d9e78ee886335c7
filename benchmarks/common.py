"""What the benchmarks share: the machine's description, the table of figures
(printed and as Markdown), the output files, and workers run in subprocesses.

The benchmarks run as scripts (``python benchmarks/bench_kg.py``), and Python
puts a script's own folder first on ``sys.path``, so they import this module
as ``common``; the subprocesses they start run the same scripts, and
multiprocessing's spawned children inherit the parent's ``sys.path``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = Path("benchmarks/out")  # relative to where the benchmark is started

Row = list[str]
# The last cell of a row is its verdict; these are coloured in the terminal.
VERDICT_COLOURS = {"PASS": "green", "MISS": "yellow", "FAIL": "bold red"}


# --------------------------------------------------------------------------
# The machine


def machine_info(package: str) -> dict[str, Any]:
    """Date, CPU, cores, memory, load, kgclip's commit (``+dirty`` when
    ``package``, the folder measured, has local changes) and Python's version;
    each benchmark adds the versions of the libraries it measures."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": dt.date.today().isoformat(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(memory, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": git_commit(package),
        "python": platform.python_version(),
    }


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit(package: str) -> str | None:
    """The checked-out commit, with ``+dirty`` when ``package`` has local
    changes; None outside a git checkout."""

    def git(*words: str) -> str:
        done = subprocess.run(
            ["git", *words], capture_output=True, text=True, check=True, cwd=REPO
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", package)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def package_version(name: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------
# Figures and tables


def rate(count: float | None, seconds: float | None) -> float | None:
    return None if count is None or not seconds else count / seconds


def fmt(value: Any, digits: int = 0) -> str:
    """A number with thousands separators, a string as it is, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def verdict(ok: bool | None, fail: str = "MISS") -> str:
    return "–" if ok is None else ("PASS" if ok else fail)


def print_table(
    caption: str,
    headers: list[str],
    rows: list[Row],
    *,
    left: Collection[str] = ("",),
    no_wrap: bool = False,
) -> None:
    """The table on the terminal: columns named in ``left`` aligned left, the
    rest right; the last cell of each row, its verdict, coloured."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=caption, title_justify="left")
    for header in headers:
        justify = "left" if header in left else "right"
        table.add_column(header, justify=justify, no_wrap=no_wrap)
    for row in rows:
        colour = VERDICT_COLOURS.get(row[-1])
        table.add_row(*row[:-1], f"[{colour}]{row[-1]}[/]" if colour else row[-1])
    Console(width=max(200, shutil.get_terminal_size().columns)).print(table)


def markdown_table(
    headers: list[str], rows: list[Row], *, left: Collection[str] = ("",)
) -> str:
    """The table in Markdown, aligned as :func:`print_table` aligns it."""
    align = "".join("|---" if h in left else "|--:" for h in headers) + "|"
    lines = ["| " + " | ".join(headers) + " |", align]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Arguments and output


def argument_parser(
    description: str, *, worker: bool = False
) -> argparse.ArgumentParser:
    """A parser with the options every benchmark takes: ``--out``, and the
    hidden ``--worker KIND ARGS RESULT`` of a benchmark's subprocesses."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=OUT, help="work folder")
    if worker:
        parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    return parser


def write_figures(
    out: Path, name: str, figures: Any, markdown: str, problems: list[str]
) -> int:
    """Write ``out/NAME.json`` (every figure) and ``out/NAME.md`` (the table),
    report each failed check on stderr; the exit status, 1 on a failed check."""
    json_path, markdown_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(figures, indent=1, default=str))
    markdown_path.write_text(markdown)
    for problem in problems:
        print(f"CHECK FAILED: {problem}", file=sys.stderr)
    print(f"figures written to {json_path} and {markdown_path}")
    return 1 if problems else 0


# --------------------------------------------------------------------------
# Workers: a benchmark's measurements, each in its own subprocess


class Clock:
    """Wall and CPU seconds: user+sys of this process (all threads), and with
    ``children`` also of its child processes that have ended."""

    def __init__(self, *, children: bool = False) -> None:
        self.who = [resource.RUSAGE_SELF]
        if children:
            self.who.append(resource.RUSAGE_CHILDREN)
        self.wall0, self.cpu0 = time.perf_counter(), self._cpu()

    def _cpu(self) -> float:
        usages = [resource.getrusage(who) for who in self.who]
        return sum(usage.ru_utime + usage.ru_stime for usage in usages)

    def read(self) -> dict[str, float]:
        return {
            "wall_s": round(time.perf_counter() - self.wall0, 3),
            "cpu_s": round(self._cpu() - self.cpu0, 3),
        }


def peak_mb() -> float:
    """The peak resident memory of this process so far, in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def worker_main(
    workers: Mapping[str, Callable[..., dict[str, Any]]],
    kind: str,
    args_file: str,
    result_file: str,
) -> None:
    """Entry point of a worker subprocess: run ``workers[kind]`` on the
    keyword arguments in ``args_file``, its result as JSON to ``result_file``."""
    kwargs = json.loads(Path(args_file).read_text())
    result = workers[kind](**kwargs)
    Path(result_file).write_text(json.dumps(result))


def run_worker(
    script: str,
    out: Path,
    name: str,
    kind: str,
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run ``script --worker KIND`` in a subprocess and return its result.

    Added to the result: ``peak_mb`` and ``child_cpu_s`` of the whole child
    (from ``os.wait4``, start-up included), ``child_wall_s``, and ``error``
    (None when it worked). Its output goes to ``out/logs/NAME.log``.
    """
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    args_file, result_file = logs / f"{name}.args.json", logs / f"{name}.result.json"
    args_file.write_text(json.dumps(kwargs))
    result_file.unlink(missing_ok=True)
    command = [sys.executable, script, "--worker", kind]
    command += [str(args_file), str(result_file)]
    print(f"  {name} ...", end=" ", flush=True)

    started = time.perf_counter()
    with (logs / f"{name}.log").open("wb") as log_file:
        child = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
        killed = threading.Event()

        def stop() -> None:
            killed.set()
            child.kill()

        timer = threading.Timer(timeout_s, stop)
        timer.start()
        _, status, usage = os.wait4(child.pid, 0)
        timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = round(time.perf_counter() - started, 2)
    print(f"{wall} s", flush=True)

    result: dict[str, Any] = {}
    error = None
    if child.returncode == 0 and result_file.exists():
        result = json.loads(result_file.read_text())
    elif killed.is_set():
        error = f"timed out after {timeout_s:g} s"
    else:
        tail = (logs / f"{name}.log").read_text(errors="replace").strip()
        error = tail.splitlines()[-1] if tail else f"exit {child.returncode}"
    if error:
        print(f"  {name} failed: {error}", flush=True)
    return {
        **result,
        "peak_mb": round(usage.ru_maxrss / 1024, 1),
        "child_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "child_wall_s": wall,
        "error": error,
    }
