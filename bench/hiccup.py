"""How much of its CPUs this machine takes back (a script, not a test): stalls a busy process sees.

A probe pinned to one CPU reads the clock in a tight loop and notes every gap longer than
`--gap-ms` (0.5 ms by default): time it was not running although it wanted to. It runs on each
CPU alone (the others idle), then on every CPU at once. The second figure is the one a latency
benchmark meets whenever it keeps every CPU busy, and it is the floor under any p99 measured
here: a server cannot answer faster than the machine lets it run.

    .venv/bin/python bench/hiccup.py [--seconds 4] [--gap-ms 0.5]

On the 2-vCPU machine this project is developed on, one CPU busy alone loses 0-3 ms in 4 s;
with both busy, the two lose 100-240 ms together, in stalls of up to 18-26 ms. Over one such
run the kernel's DAMON thread (`kdamond`) and the sandbox's agent (PID 1) used 80 ms of CPU
each: whenever every CPU is busy, what they need is taken from someone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

PROBE = r"""
import json, sys, time
seconds, gap = float(sys.argv[1]), int(float(sys.argv[2]) * 1e6)
clock = time.perf_counter_ns
begin = last = clock()
end = begin + int(seconds * 1e9)
stalls = []
while last < end:
    now = clock()
    if now - last > gap:
        stalls.append(now - last)
    last = now
print(json.dumps({"elapsed_ms": (last - begin) / 1e6, "stalls_ms": [s / 1e6 for s in stalls]}))
"""


def probe(cpus: list[int], seconds: float, gap_ms: float) -> list[dict[str, float]]:
    """One probe per CPU in `cpus`, all at once; each one's stalls."""
    running = []
    for cpu in cpus:
        process = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(seconds), str(gap_ms)], stdout=subprocess.PIPE
        )
        os.sched_setaffinity(process.pid, {cpu})
        running.append(process)
    results = []
    for cpu, process in zip(cpus, running, strict=True):
        out, _ = process.communicate()
        data = json.loads(out)
        stalls = sorted(data["stalls_ms"])
        results.append(
            {
                "cpu": cpu,
                "stalls": len(stalls),
                "lost_ms": sum(stalls),
                "lost_share": sum(stalls) / data["elapsed_ms"],
                "max_ms": stalls[-1] if stalls else 0.0,
            }
        )
    return results


def line(label: str, result: dict[str, float]) -> str:
    return (
        f"{label:<22} CPU {result['cpu']:.0f}: {result['stalls']:4.0f} stalls, "
        f"{result['lost_ms']:7.1f} ms lost ({result['lost_share']:.1%}), longest "
        f"{result['max_ms']:5.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--gap-ms", type=float, default=0.5, help="a gap longer than this stalls")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    print(f"stalls longer than {args.gap_ms} ms in {args.seconds:g} s, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    for cpu in cpus:
        print(line("this CPU busy alone", probe([cpu], args.seconds, args.gap_ms)[0]))
    for result in probe(cpus, args.seconds, args.gap_ms):
        print(line("every CPU busy", result))


if __name__ == "__main__":
    main()
