"""A/B of two builds of the side-by-side bench (benches/side_by_side.rs): both workers alive at
once, the same requests sent to each in turn (the order flipped every round), medians in ms a step.

    python3 scripts/ab_workers.py OLD_BENCH NEW_BENCH --threads 1 --rounds 15 \
        --requests "mlp fused plain 10;cnn fused plain 10"

A request is `model variant method steps`, as the bench's `--worker` mode reads it; each is sent
once with 2 steps first as a warm-up. The workers run as scripts/side_by_side.py runs them (its
`Worker`: allocator setting, second order on, pinned to the first THREADS cores). Build a bench with
`cargo bench -p advtrain --bench side_by_side --no-run` and copy the executable it names before
changing the code. The figures in data/results/bench/new-machine-ab.txt came from this script.
"""

import argparse
import statistics

from side_by_side import Worker


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", required=True, help="`model variant method steps`, separated by `;`")
    args = parser.parse_args()
    requests = [r.strip() for r in args.requests.split(";") if r.strip()]
    for r in requests:
        if len(r.split()) != 4 or not r.split()[3].isdigit():
            raise SystemExit(f"request `{r}`: expected `model variant method steps`")
    sides = {side: Worker(side, [bench, "--worker"], args.threads) for side, bench in [("old", args.old), ("new", args.new)]}
    times = {(side, r): [] for side in sides for r in requests}
    for r in requests:
        for worker in sides.values():
            worker.ask(" ".join(r.split()[:3]) + " 2")
    for i in range(args.rounds):
        for r in requests:
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for side in order:
                times[(side, r)].append(sides[side].ask(r) / int(r.split()[3]))
    for r in requests:
        old, new = statistics.median(times[("old", r)]), statistics.median(times[("new", r)])
        print(f"{args.threads}t {r:40s} old {old:8.2f}  new {new:8.2f}  new/old {new / old:.3f}")
    for worker in sides.values():
        worker.close()


if __name__ == "__main__":
    main()
