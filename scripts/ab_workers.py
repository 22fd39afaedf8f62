"""A/B of two builds of the side-by-side bench (benches/side_by_side.rs): both workers alive at
once, the same requests sent to each in turn (the order flipped every round), medians in ms a step.

    python3 scripts/ab_workers.py OLD_BENCH NEW_BENCH --threads 1 --rounds 15 \
        --requests "mlp fused plain 10;cnn fused plain 10"

A request is `model variant method steps`, as the bench's `--worker` mode reads it; each is sent
once with 2 steps first as a warm-up. Build a bench with
`cargo bench -p advtrain --bench side_by_side --no-run` and copy the executable it names before
changing the code. The figures in data/results/bench/new-machine-ab.txt came from this script.
"""

import argparse
import os
import shutil
import statistics
import subprocess

# The allocator setting of scripts/side_by_side.py (book, "The allocator").
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:glibc.malloc.arena_max=1"


def worker(bench, threads):
    env = dict(
        os.environ,
        GLIBC_TUNABLES=MALLOC_TUNABLES,
        CANDLE_GRAD_DO_NOT_DETACH="1",
        RAYON_NUM_THREADS=str(threads),
    )
    command = [bench, "--worker"]
    if shutil.which("taskset"):
        command = ["taskset", "-c", ",".join(str(c) for c in range(threads))] + command
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def ask(process, request):
    process.stdin.write(request + "\n")
    process.stdin.flush()
    answer = process.stdout.readline().strip()
    if not answer.startswith("ok "):
        raise SystemExit(f"the worker answered `{answer or 'nothing'}` to `{request}`")
    return float(answer[3:])


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
    sides = {"old": worker(args.old, args.threads), "new": worker(args.new, args.threads)}
    times = {(side, r): [] for side in sides for r in requests}
    for r in requests:
        for process in sides.values():
            ask(process, " ".join(r.split()[:3]) + " 2")
    for i in range(args.rounds):
        for r in requests:
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for side in order:
                times[(side, r)].append(ask(sides[side], r) / int(r.split()[3]))
    for r in requests:
        old, new = statistics.median(times[("old", r)]), statistics.median(times[("new", r)])
        print(f"{args.threads}t {r:40s} old {old:8.2f}  new {new:8.2f}  new/old {new / old:.3f}")
    for process in sides.values():
        process.stdin.write("quit\n")
        process.stdin.close()
        process.wait()


if __name__ == "__main__":
    main()
