#!/usr/bin/env python3
"""Pools the plain rounds of several `bench/run.sh` reports.

One run's median ratio moves by several points with the box's noise; the rounds of several
runs of the same binary, taken together, say how sure a ratio is.

usage: bench/pool.py REPORT.md [REPORT.md ...]
       (e.g. earlier versions from git: git show COMMIT:bench/results/latest.md > run1.md)

Reads the first "Rounds (req/s)" table of each report (the plain rows: nginx, optionally
nginx + headers, portcullis) and prints, over all rounds: the ratio of the medians with a
bootstrap 95 % interval, and the per-round ratios' median and mean with the mean's 95 %
confidence interval (normal approximation; Student's t for fewer than 30 rounds).
"""

import random
import statistics as st
import sys

# two-sided 95 % t quantiles for 1..29 degrees of freedom
T = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
     2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
     2.060, 2.056, 2.052, 2.048, 2.045]


def plain_rounds(path):
    """(nginx, portcullis) req/s of each round of the report's first rounds table."""
    rows, header, inside = [], None, False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("Rounds (req/s)"):
                if rows:
                    break  # the second table is the mTLS pair
                inside = True
                continue
            if not inside or not line.startswith("|"):
                if inside and rows:
                    break
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] == "round":
                header = cells
                continue
            if header is None or cells[0].startswith("-"):
                continue
            rec = dict(zip(header, cells))
            try:
                rows.append((float(rec["nginx"]), float(rec["portcullis"])))
            except (KeyError, ValueError):
                continue  # skipped or failed rounds
    return rows


def main(paths):
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    pairs = []
    for p in paths:
        rows = plain_rounds(p)
        if not rows:
            print(f"{p}: no plain rounds found", file=sys.stderr)
            return 1
        ng = st.median(a for a, _ in rows)
        pc = st.median(b for _, b in rows)
        print(f"{p}: {len(rows)} rounds, Portcullis/nginx ratio of the medians {pc / ng:.3f}")
        pairs += rows
    n = len(pairs)
    ng = st.median(a for a, _ in pairs)
    pc = st.median(b for _, b in pairs)
    ratios = [b / a for a, b in pairs]
    mean = st.mean(ratios)
    rng = random.Random(1)
    boot = []
    for _ in range(10000):
        s = [rng.choice(pairs) for _ in range(n)]
        boot.append(st.median(b for _, b in s) / st.median(a for a, _ in s))
    boot.sort()
    print(f"all {n} rounds: nginx median {ng:.0f} req/s, portcullis median {pc:.0f} req/s, "
          f"ratio of the medians {pc / ng:.3f} (bootstrap 95 %: {boot[250]:.3f} to {boot[9750]:.3f})")
    if n > 1:
        q = T[n - 2] if n - 1 <= len(T) else 1.96
        h = q * st.stdev(ratios) / n ** 0.5
        ci = f"95 % confidence interval of the mean {mean - h:.3f} to {mean + h:.3f}"
    else:
        ci = "one round: no interval"
    print(f"per-round ratios: median {st.median(ratios):.3f}, mean {mean:.3f} ({ci}); "
          f"{sum(r < 0.9 for r in ratios)} of {n} below 0.9, from {min(ratios):.2f} to {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
