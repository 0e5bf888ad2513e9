"""bench/run_all.py: discovery, the BENCH lines, the table, failures, timeouts.

The runner runs as users start it (``python bench/run_all.py``) on tiny fake
scripts in a temporary folder; no timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = ROOT / "bench"
sys.path.insert(0, str(BENCH_DIR))

from _common import emit, parse_figure  # noqa: E402

HEADER = f"import sys\nsys.path.insert(0, {str(BENCH_DIR)!r})\n"
MAIN = 'if __name__ == "__main__":\n    main()\n'


def write_script(folder: Path, name: str, body: str, *, main: bool = True) -> Path:
    """Write ``body`` as function main() of script ``name`` in ``folder``."""
    indented = "".join(f"    {line}\n" for line in body.strip().splitlines())
    text = HEADER + "\n\ndef main():\n" + indented + "\n\n" + (MAIN if main else "")
    path = folder / f"{name}.py"
    path.write_text(text)
    return path


GOOD = """
from _common import emit
print("human output stays")
emit(bench="good", figure="throughput", value=80.0, unit="msg/s",
     baseline="ideal", baseline_value=100.0, target=0.5)
emit(bench="good", figure="query time", value=4.0, unit="ms",
     baseline="without index", baseline_value=20.0, better="lower", target=10)
emit(bench="good", figure="lost", value=0, unit="messages", target=0, op="==")
"""


def run_all(
    scripts: Path, out: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, str(BENCH_DIR / "run_all.py")),
            *("--dir", str(scripts), "--out", str(out)),
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def results(out: Path) -> dict:
    return json.loads((out / "latest.json").read_text())


def test_runner_builds_one_table_and_a_missed_target_is_not_a_failure(tmp_path):
    scripts, out = tmp_path / "scripts", tmp_path / "out"
    scripts.mkdir()
    write_script(scripts, "good", GOOD)
    marker = tmp_path / "helper-ran"
    # A helper without a __main__ guard (like bare_wsgi.py) and a _private
    # module are not benchmarks: running either would leave the marker.
    touch = f"open({str(marker)!r}, 'w').close()"
    write_script(scripts, "helper", touch, main=False)
    write_script(scripts, "_private", touch)

    proc = run_all(scripts, out)

    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    data = results(out)
    assert [r["bench"] for r in data["results"]] == ["good"]
    (good,) = data["results"]
    assert good["status"] == "ok"
    figures = {f["figure"]: f for f in good["figures"]}
    assert figures["throughput"]["ratio"] == pytest.approx(0.8)
    assert figures["throughput"]["met"] is True
    # A time: the ratio is the speed-up (baseline / value), 5 < 10.
    assert figures["query time"]["ratio"] == pytest.approx(5.0)
    assert figures["query time"]["met"] is False
    assert figures["lost"]["met"] is True

    table = (out / "latest.md").read_text()
    rows = {
        cells[1]: cells
        for line in table.splitlines()
        if line.startswith("| good ")
        for cells in [[c.strip() for c in line.split("|")[1:-1]]]
    }
    assert rows["throughput"] == [
        "good",
        "throughput",
        "80.0 msg/s",
        "ideal",
        "100 msg/s",
        "0.80",
        ">= 0.50",
        "yes",
    ]
    assert rows["query time"][5:] == ["5.00", ">= 10", "NO"]
    assert rows["lost"][2:] == ["0 messages", "", "", "", "== 0", "yes"]
    assert table in proc.stdout  # the same table is printed
    log = Path(good["log"]).read_text()
    assert "human output stays" in log
    assert (Path(good["log"]).parent / "report.md").read_text() == table


def test_a_script_that_fails_to_run_fails_the_run_and_the_rest_still_report(
    tmp_path,
):
    scripts, out = tmp_path / "scripts", tmp_path / "out"
    scripts.mkdir()
    write_script(scripts, "good", GOOD)
    write_script(
        scripts,
        "crashes",
        """
from _common import emit
emit(bench="crashes", figure="before the crash", value=1.0, unit="x")
raise SystemExit(3)
""",
    )
    write_script(scripts, "silent", "print('no figures at all')")
    write_script(scripts, "garbled", "print('BENCH {not json')")

    proc = run_all(scripts, out)

    assert proc.returncode == 1
    assert "failed to run: crashes, garbled, silent" in proc.stderr
    by_name = {r["bench"]: r for r in results(out)["results"]}
    assert by_name["good"]["status"] == "ok"
    assert len(by_name["good"]["figures"]) == 3
    assert by_name["crashes"]["status"] == "failed"
    assert by_name["crashes"]["exit_code"] == 3
    assert by_name["crashes"]["figures"][0]["figure"] == "before the crash"
    assert by_name["silent"]["errors"] == ["no BENCH figures in its output"]
    assert by_name["garbled"]["errors"][0].startswith("unreadable BENCH line")
    failures = [
        cells[:2]
        for line in (out / "latest.md").read_text().splitlines()
        for cells in [[c.strip() for c in line.split("|")[1:-1]]]
        if len(cells) == 8 and cells[1].startswith("**")
    ]
    assert failures == [
        ["crashes", "**failed**: exit status 3"],
        [
            "garbled",
            "**failed**: unreadable BENCH line: Expecting property name "
            "enclosed in double quotes: line 1 column 2 (char 1)",
        ],
        ["silent", "**failed**: no BENCH figures in its output"],
    ]


def test_a_script_past_its_timeout_is_stopped_with_its_children(tmp_path):
    scripts, out = tmp_path / "scripts", tmp_path / "out"
    scripts.mkdir()
    pid_file = tmp_path / "child.pid"
    write_script(
        scripts,
        "slow",
        f"""
import subprocess, time
child = subprocess.Popen(["sleep", "300"])
open({str(pid_file)!r}, "w").write(str(child.pid))
time.sleep(300)
""",
    )

    started = time.monotonic()
    proc = run_all(scripts, out, "--timeout", "2")

    assert time.monotonic() - started < 60
    assert proc.returncode == 1
    (slow,) = results(out)["results"]
    assert slow["status"] == "timeout"
    assert slow["errors"] == ["timed out after 2 s"]
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":  # a zombie waiting for init: it has stopped
            break
        time.sleep(0.1)
    else:
        assert not Path(f"/proc/{child}").exists()


def test_quick_mode_passes_each_scripts_small_sizes_and_extra_args(tmp_path):
    scripts, out = tmp_path / "scripts", tmp_path / "out"
    scripts.mkdir()
    # Named like the real webhooks bench, so it gets that script's quick sizes.
    write_script(
        scripts,
        "webhooks",
        """
from _common import emit
print("argv", sys.argv[1:])
emit(bench="webhooks", figure="args", value=len(sys.argv) - 1, unit="args")
""",
    )

    proc = run_all(
        scripts,
        out,
        env={"BENCH_QUICK": "1", "BENCH_ARGS_WEBHOOKS": "--concurrency 8"},
    )

    assert proc.returncode == 0, proc.stderr
    (webhooks,) = results(out)["results"]
    assert webhooks["args"] == ["--requests", "1000", "--concurrency", "8"]
    assert "argv ['--requests', '1000', '--concurrency', '8']" in proc.stdout
    assert results(out)["meta"]["mode"] == "quick"


def test_an_unknown_benchmark_name_is_a_usage_error(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    write_script(scripts, "good", GOOD)

    proc = run_all(scripts, tmp_path / "out", "--only", "nope")

    assert proc.returncode == 2
    assert "no benchmark named nope; there are: good" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_emit_orients_the_ratio_and_checks_the_target(capsys):
    rate = emit(
        bench="b", figure="f", value=30.0, unit="u", baseline_value=60.0, target=0.6
    )
    assert (rate["ratio"], rate["met"]) == (0.5, False)
    time_ = emit(
        bench="b",
        figure="t",
        value=2.0,
        unit="ms",
        baseline_value=30.0,
        better="lower",
        target=10,
    )
    assert (time_["ratio"], time_["met"]) == (15.0, True)
    nothing = emit(
        bench="b", figure="z", value=5.0, unit="u", baseline_value=0.0, target=1
    )
    assert (nothing["ratio"], nothing["met"]) == (None, None)
    lines = capsys.readouterr().out.splitlines()
    assert [parse_figure(line) for line in lines] == [rate, time_, nothing]


def test_parse_figure_rejects_bench_lines_that_are_not_figures():
    assert parse_figure("plain output") is None
    with pytest.raises(ValueError, match="without unit, value"):
        parse_figure('BENCH {"bench": "b", "figure": "f"}')
    with pytest.raises(ValueError, match="JSON object"):
        parse_figure("BENCH [1, 2]")
    with pytest.raises(ValueError, match="better must be"):
        emit(bench="b", figure="f", value=1, unit="u", better="more")
