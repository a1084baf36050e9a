#!/usr/bin/env python3
"""Small helpers for the bench scripts (no third-party modules).

  stats.py summary LABEL UNIT TARGET V1 [V2 ...]
      prints "LABEL: median X UNIT, min Y UNIT, max Z UNIT (target TARGET) [n=K]"
  stats.py median V1 [V2 ...]        prints the median alone
  stats.py json-get FILE KEY[.KEY...] prints one field of a JSON file
  stats.py clients-of FILE STATE...   prints the clients of a `hq job status
                                      --json` file whose state is one of STATE
"""
import json
import statistics
import sys


def fmt(v):
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def main(argv):
    cmd = argv[1]
    if cmd == "summary":
        label, unit, target = argv[2], argv[3], argv[4]
        vals = [float(x) for x in argv[5:]]
        if not vals:
            print(f"{label}: no measurement (target {target})")
            return 1
        u = f" {unit}" if unit else ""
        print(
            f"{label}: median {fmt(statistics.median(vals))}{u}, "
            f"min {fmt(min(vals))}{u}, max {fmt(max(vals))}{u} "
            f"(target {target}) [n={len(vals)}]"
        )
    elif cmd == "median":
        print(fmt(statistics.median(float(x) for x in argv[2:])))
    elif cmd == "json-get":
        with open(argv[2]) as f:
            v = json.load(f)
        for k in argv[3].split("."):
            v = v[int(k)] if isinstance(v, list) else v[k]
        print(json.dumps(v) if isinstance(v, (dict, list)) else v)
    elif cmd == "clients-of":
        with open(argv[2]) as f:
            st = json.load(f)
        want = set(argv[3:])
        for c in st["clients"]:
            if c["state"] in want:
                print(c["client"])
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
