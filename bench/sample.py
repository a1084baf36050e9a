#!/usr/bin/env python3
"""Samples one process's CPU time and I/O counters.

  sample.py record PID OUT [INTERVAL_MS]
      appends "t_ns ticks write_bytes syscw" to OUT every INTERVAL_MS (default
      20) until SIGTERM or until PID exits. ticks = utime + stime (/proc/PID/stat),
      write_bytes and syscw from /proc/PID/io.
  sample.py window OUT T0_NS T1_NS
      prints "cpu_s active_s write_bytes syscw" for the samples between T0 and
      T1: CPU seconds used, the span from the first to the last sample in which
      the process used CPU, bytes it caused to be written to storage, and write
      system calls.
"""
import os
import signal
import sys
import time


def read(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    wb = sc = 0
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                k, v = line.split(":")
                if k == "write_bytes":
                    wb = int(v)
                elif k == "syscw":
                    sc = int(v)
    except OSError:
        pass
    return ticks, wb, sc


def record(pid, out, interval_ms):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with open(out, "a", buffering=1) as f:
        while not stop:
            try:
                t, wb, sc = read(pid)
            except OSError:
                break
            f.write(f"{time.time_ns()} {t} {wb} {sc}\n")
            time.sleep(interval_ms / 1000)


def window(path, t0, t1):
    rows = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) == 4:
                rows.append(tuple(int(x) for x in p))
    # The last sample at or before t0, and every sample up to the first at or after t1.
    before = [r for r in rows if r[0] <= t0]
    inside = [r for r in rows if t0 < r[0] < t1]
    after = [r for r in rows if r[0] >= t1]
    seq = before[-1:] + inside + after[:1]
    if len(seq) < 2:
        print("0 0 0 0")
        return
    hz = os.sysconf("SC_CLK_TCK")
    first = last = None
    for a, b in zip(seq, seq[1:]):
        if b[1] > a[1]:
            if first is None:
                first = a[0]
            last = b[0]
    active = (last - first) / 1e9 if first is not None else 0.0
    cpu = (seq[-1][1] - seq[0][1]) / hz
    print(f"{cpu:.2f} {active:.3f} {seq[-1][2] - seq[0][2]} {seq[-1][3] - seq[0][3]}")


def main(argv):
    if argv[1] == "record":
        record(int(argv[2]), argv[3], int(argv[4]) if len(argv) > 4 else 20)
    elif argv[1] == "window":
        window(argv[2], int(argv[3]), int(argv[4]))
    else:
        sys.exit(f"unknown command {argv[1]}")


if __name__ == "__main__":
    main(sys.argv)
