"""Run every benchmark in bench/ and print one table of their figures.

Each script in this folder that runs as a program (``if __name__ ==
"__main__"``; helpers such as ``bare_wsgi.py`` do not, names starting with
``_`` are skipped) runs as a subprocess with the environment passed through
(DATABASE_URL / CELERY_BROKER_URL select PostgreSQL / Redis) and a timeout.
Its output streams to the terminal and to a log; its ``BENCH {json}`` lines
(bench/_common.py ``emit``) become rows of one table: figure, value, the
baseline measured in the same run, the ratio, the target and whether it is
met. The table (Markdown) and the raw figures (JSON) are saved under
var/bench/. The exit status is non-zero only when a script failed to run
(non-zero exit, timeout, no figures, an unreadable BENCH line), never because
a target was missed.

    make bench                          # full sizes (the issues' figures)
    BENCH_QUICK=1 make bench            # smaller sizes: a few minutes
    .venv/bin/python bench/run_all.py --quick --only webhooks pipeline
    BENCH_ARGS_BRIDGE="--messages 5000" make bench    # extra args per script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _common import parse_figure  # noqa: E402

# Sizes for BENCH_QUICK=1 / --quick: each script's own size flags, small
# enough that the whole set runs in a few minutes on 2 shared cores.
QUICK_ARGS: dict[str, list[str]] = {
    "ai_fanout": ["--messages", "200"],
    "analytics": ["--events", "20000", "--rows", "200000", "--runs", "3"],
    "bridge": ["--messages", "3000"],
    "pipeline": ["--runs", "10"],
    "webhooks": ["--requests", "1000"],
}
QUICK_TIMEOUT = 600
FULL_TIMEOUT = 3600
# After SIGINT (the scripts' finally blocks stop their workers and servers),
# how long before the whole process group is killed.
STOP_GRACE_SECONDS = 30
COLUMNS = (
    "bench",
    "figure",
    "value",
    "baseline",
    "baseline value",
    "ratio",
    "target",
    "met?",
)


def discover(folder: Path) -> list[Path]:
    """Return the benchmark scripts of ``folder``, sorted by name."""
    scripts = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_") or path.resolve() == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8")
        if '__name__ == "__main__"' in text or "__name__ == '__main__'" in text:
            scripts.append(path)
    return scripts


def script_args(name: str, *, quick: bool) -> list[str]:
    """Return the arguments for script ``name``: quick sizes, then BENCH_ARGS_*."""
    args = list(QUICK_ARGS.get(name, [])) if quick else []
    return args + shlex.split(os.environ.get(f"BENCH_ARGS_{name.upper()}", ""))


def _stop(proc: subprocess.Popen[str]) -> None:
    """Interrupt the script's process group as Ctrl-C would, then kill it."""
    for sig, grace in ((signal.SIGINT, STOP_GRACE_SECONDS), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_script(
    path: Path, *, args: list[str], timeout: float, log_path: Path, echo: TextIO
) -> dict[str, Any]:
    """Run one script; return its status, figures and errors."""
    name = path.stem
    figures: list[dict[str, Any]] = []
    errors: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [sys.executable, str(path), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # Its own process group, so a timeout stops its workers too.
            start_new_session=True,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                echo.write(f"{name}| {line}")
                echo.flush()
                try:
                    figure = parse_figure(line.rstrip("\n"))
                except ValueError as exc:
                    errors.append(str(exc))
                    continue
                if figure is not None:
                    figures.append(figure)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(proc)
        except BaseException:
            _stop(proc)
            raise
        reader.join(30)
    seconds = time.monotonic() - started
    if timed_out:
        status = "timeout"
        errors.append(f"timed out after {timeout:.0f} s")
    elif proc.returncode != 0:
        status = "failed"
        errors.append(f"exit status {proc.returncode}")
    elif errors:
        status = "failed"
    elif not figures:
        status = "failed"
        errors.append("no BENCH figures in its output")
    else:
        status = "ok"
    return {
        "bench": name,
        "script": str(path.relative_to(path.parent.parent)),
        "args": args,
        "status": status,
        "exit_code": proc.returncode,
        "seconds": round(seconds, 1),
        "figures": figures,
        "errors": errors,
        "log": str(log_path),
    }


def fmt_number(value: Any) -> str:
    """Return a figure as text with the precision a reader needs."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """Return one row of text per figure, and one per script that failed."""
    rows = []
    for result in results:
        for fig in result["figures"]:
            unit = fig.get("unit") or ""
            value = f"{fmt_number(fig['value'])} {unit}".strip()
            base = fig.get("baseline_value")
            base_text = f"{fmt_number(base)} {unit}".strip() if base is not None else ""
            target = fig.get("target")
            met = fig.get("met")
            rows.append(
                [
                    fig["bench"],
                    fig["figure"],
                    value,
                    fig.get("baseline") or "",
                    base_text,
                    fmt_number(fig.get("ratio")),
                    f"{fig.get('op', '>=')} {fmt_number(target)}"
                    if target is not None
                    else "",
                    {True: "yes", False: "NO", None: ""}[met],
                ]
            )
        if result["status"] != "ok":
            why = "; ".join(result["errors"])
            rows.append([result["bench"], f"**{result['status']}**: {why}", *[""] * 6])
    return rows


def markdown_table(rows: list[list[str]]) -> str:
    """Return ``rows`` under COLUMNS as an aligned Markdown table."""
    cells = [list(COLUMNS)] + [[c.replace("|", "\\|") for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    numeric = {2, 4, 5}  # right-aligned: value, baseline value, ratio

    def line(row: list[str]) -> str:
        padded = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [
        "-" * (w - 1) + ":" if i in numeric else "-" * w for i, w in enumerate(widths)
    ]
    return "\n".join([line(cells[0]), line(rule), *(line(r) for r in cells[1:])])


def describe_url(url: str, default: str) -> str:
    """Return a URL's scheme, host and path, without credentials."""
    if not url:
        return default
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def git_commit() -> str:
    """Return the checkout's short commit id, or '' outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def report(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """Return the Markdown report: what ran where, the table, each script."""
    lines = [
        f"# make bench, {meta['started_at']}",
        "",
        f"- mode: {meta['mode']}; commit {meta['commit'] or '?'}; "
        f"{meta['cores']} cores; load average before {meta['load_before']}, "
        f"after {meta['load_after']}",
        f"- database: {meta['database']}; broker: {meta['broker']}",
        "- ratio: above 1 means better than the baseline of the same run "
        "(value / baseline for rates, baseline / value for times); the target "
        "applies to the ratio, or to the value when there is no baseline",
        "",
        markdown_table(table_rows(results)),
        "",
        "| script | status | seconds | args | log |",
        "| --- | --- | ---: | --- | --- |",
    ]
    for r in results:
        args = " ".join(r["args"]) or "(defaults)"
        lines.append(
            f"| {r['script']} | {r['status']} | {r['seconds']:.0f} | {args} "
            f"| {r['log']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help="smaller sizes (also BENCH_QUICK=1)",
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="scripts to run")
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("BENCH_TIMEOUT") or 0),
        help=f"seconds per script (default {QUICK_TIMEOUT} quick, "
        f"{FULL_TIMEOUT} full; also BENCH_TIMEOUT)",
    )
    parser.add_argument("--dir", type=Path, default=BENCH_DIR, help=argparse.SUPPRESS)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("BENCH_OUT") or ROOT / "var" / "bench"),
        help="where the report goes (default var/bench; also BENCH_OUT)",
    )
    opts = parser.parse_args(argv)
    scripts = discover(opts.dir)
    if opts.only:
        known = {s.stem: s for s in scripts}
        unknown = sorted(set(opts.only) - known.keys())
        if unknown:
            parser.error(
                f"no benchmark named {', '.join(unknown)}; "
                f"there are: {', '.join(known)}"
            )
        scripts = [known[name] for name in opts.only]
    if not scripts:
        parser.error(f"no benchmark scripts in {opts.dir}")
    timeout = opts.timeout or (QUICK_TIMEOUT if opts.quick else FULL_TIMEOUT)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = opts.out / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    meta: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if opts.quick else "full",
        "commit": git_commit(),
        "host": platform.node(),
        "cores": os.cpu_count(),
        "database": describe_url(os.environ.get("DATABASE_URL", ""), "SQLite"),
        "broker": describe_url(
            os.environ.get("CELERY_BROKER_URL", ""), "filesystem://"
        ),
        "timeout_seconds": timeout,
        "load_before": load,
    }
    results = []
    for path in scripts:
        args = script_args(path.stem, quick=opts.quick)
        print(f"\n=== {path.stem} {' '.join(args)}".rstrip(), flush=True)
        results.append(
            run_script(
                path,
                args=args,
                timeout=timeout,
                log_path=run_dir / f"{path.stem}.log",
                echo=sys.stdout,
            )
        )
    meta["load_after"] = "/".join(f"{x:.1f}" for x in os.getloadavg())

    text = report(meta, results)
    raw = json.dumps({"meta": meta, "results": results}, indent=2) + "\n"
    (run_dir / "report.md").write_text(text, encoding="utf-8")
    (run_dir / "results.json").write_text(raw, encoding="utf-8")
    shutil.copyfile(run_dir / "report.md", opts.out / "latest.md")
    shutil.copyfile(run_dir / "results.json", opts.out / "latest.json")
    print("\n" + text)
    print(f"saved: {run_dir}/report.md, results.json and one log per script")
    failed = [r["bench"] for r in results if r["status"] != "ok"]
    if failed:
        print(f"failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
