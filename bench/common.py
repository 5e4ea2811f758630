"""What every benchmark shares: the machine's description and the dated row in bench/RESULTS.md."""

import datetime
import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def machine() -> str:
    with open("/proc/meminfo") as fh:
        mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    return f"{os.cpu_count()} cores, {mem_kb / 1024 / 1024:.0f} GiB"


def append_result(bench: str, rows: list[tuple], notes: list[str] | None = None) -> None:
    """rows: (figure, measured, baseline, ratio, target); notes: what the script printed under its table (where the
    time and CPU went, what limits a missed target), kept with the figures they explain."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    new = not os.path.exists(RESULTS)
    with open(RESULTS, "a", encoding="utf-8") as fh:
        if new:
            fh.write("# Benchmark results\n\nAppended by the scripts in bench/; each figure beside its baseline "
                     "measured in the same run on the same machine.\n")
        fh.write(f"\n## {bench} — {stamp} — {machine()}\n\n| figure | measured | baseline | ratio | target |\n"
                 "|---|---|---|---|---|\n")
        for row in rows:
            fh.write("| " + " | ".join(str(c) for c in row) + " |\n")
        if notes:
            fh.write("\nNotes:\n\n" + "".join(f"- {note}\n" for note in notes))
