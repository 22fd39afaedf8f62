"""Drives the side-by-side benchmark: advtrain (benches/side_by_side.rs --worker) and JAX
(scripts/side_by_side_jax.py) as two long-lived processes pinned to the same cores, asked in turn for
the same steps, round after round, so that both see the same machine. Prints, per thread count, the
median milliseconds per step, the ratio advtrain / JAX, each method's cost in plain steps, and the
goals of issue 7. Standard library only; run by scripts/side-by-side.sh.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys

MODELS = ["mlp", "embedding", "cnn", "minilm"]
# The library's own models (advtrain::models) run on the fused ops only: no candle-ops variant.
LIBRARY_MODELS = {"cnn", "minilm"}
METHODS = ["plain", "fgm", "gradient_penalty", "hutchinson_1", "hutchinson_taylor"]
# Steps that need no second order: they also run with it off.
FIRST_ORDER = ["plain", "fgm", "hutchinson_taylor"]
# advtrain-only steps and the JAX step they are measured against: the Hutchinson step by Taylor
# mode (advtrain's jet forms, fused ops only) against JAX's forward-over-reverse Hutchinson step.
JAX_COUNTERPART = {"hutchinson_taylor": "hutchinson_1"}
# Goals, as ratios: the plain step to JAX's (MLP, one thread), then each method to its plain step.
PLAIN_GOAL = 1.5
METHOD_GOALS = {"fgm": 2.05, "gradient_penalty": 2.2, "hutchinson_1": 3.0}
# glibc's malloc hands blocks above its mmap threshold back to the system on free and takes fresh,
# zero-filled pages for the next step; with these settings it keeps them, as XLA's own allocator
# does. Without them advtrain's times on the same binary drifted by up to 1.7x from run to run.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:glibc.malloc.arena_max=1"


class Worker:
    def __init__(self, name, command, threads, second_order=True, tuned_malloc=True):
        env = dict(os.environ)
        if tuned_malloc:
            env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
        else:
            env.pop("GLIBC_TUNABLES", None)
        env["CANDLE_GRAD_DO_NOT_DETACH"] = "1" if second_order else "0"
        env["RAYON_NUM_THREADS"] = str(threads)
        env["OMP_NUM_THREADS"] = str(threads)
        if threads == 1:
            env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        if shutil.which("taskset"):
            command = ["taskset", "-c", ",".join(str(c) for c in range(threads))] + command
        self.name = name
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
        )

    def ask(self, request):
        self.process.stdin.write(request + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        if not answer.startswith("ok "):
            sys.exit(f"{self.name} answered `{answer or 'nothing (it exited)'}` to `{request}`")
        return float(answer[3:])

    def close(self):
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
        self.process.wait()


def measure(rust, jax, threads, rounds, steps, tuned_malloc, models, accumulate=None):
    """Median ms per step for (model, method, side), side in jax / candle / fused (/ accumulate:
    the fused ops on the bench built against candle with the first-gradient store)."""
    workers = {
        "jax": Worker("JAX", jax, threads, tuned_malloc=tuned_malloc),
        "advtrain": Worker("advtrain", rust, threads, tuned_malloc=tuned_malloc),
        # The same binary with second order off: what the switch costs plain steps and FGM.
        "first-order": Worker(
            "advtrain (second order off)",
            rust,
            threads,
            second_order=False,
            tuned_malloc=tuned_malloc,
        ),
    }
    sides = [
        ("jax", "jax", "-"),
        ("candle", "advtrain", "candle"),
        ("fused", "advtrain", "fused"),
        ("first-order", "first-order", "fused"),
    ]
    if accumulate:
        workers["accumulate"] = Worker(
            "advtrain (candle storing first gradients)", accumulate, threads, tuned_malloc=tuned_malloc
        )
        sides.append(("accumulate", "accumulate", "fused"))
    cells = [(m, k) for m in models for k in METHODS]

    def applies(side, model, method):
        if side == "accumulate":
            return True
        if side == "candle" and model in LIBRARY_MODELS:
            return False
        if method in JAX_COUNTERPART and side in ("jax", "candle"):
            return False
        return side != "first-order" or method in FIRST_ORDER

    times = {(m, k, s): [] for m, k in cells for s, _, _ in sides if applies(s, m, k)}
    for model, method in cells:  # warm-up: JAX compiles, both allocate
        for side, worker, variant in sides:
            if applies(side, model, method):
                workers[worker].ask(f"{model} {variant} {method} 2")
    for r in range(rounds):
        for i in range(len(cells)):
            model, method = cells[(i + r) % len(cells)]
            for j in range(len(sides)):
                side, worker, variant = sides[(j + r) % len(sides)]
                if applies(side, model, method):
                    ms = workers[worker].ask(f"{model} {variant} {method} {steps}")
                    times[(model, method, side)].append(ms / steps)
        print(f"  {threads} thread(s): round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    for worker in workers.values():
        worker.close()
    return {key: statistics.median(values) for key, values in times.items()}


def report(medians, threads, rounds, steps, tuned_malloc, models):
    malloc = "glibc malloc tuned (GLIBC_TUNABLES)" if tuned_malloc else "glibc malloc as is"
    accumulate = any(side == "accumulate" for _, _, side in medians)
    extra = " fused, candle storing first gradients | that / JAX |" if accumulate else ""
    lines = [
        f"### {threads} thread(s): median ms per step over {rounds} rounds of {steps} steps, "
        f"{malloc}",
        "",
        "| model | method | JAX | advtrain, candle ops | advtrain, fused ops | fused, second order "
        "off | fused / JAX | JAX: x plain | advtrain fused: x plain |" + extra,
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if accumulate else ""),
    ]
    for model in models:
        for method in METHODS:
            jax = medians[(model, JAX_COUNTERPART.get(method, method), "jax")]
            fused = medians[(model, method, "fused")]
            candle = medians.get((model, method, "candle"))
            candle = "-" if candle is None else f"{candle:.2f}"
            jax_plain = medians[(model, "plain", "jax")]
            fused_plain = medians[(model, "plain", "fused")]
            first = medians.get((model, method, "first-order"))
            first = "-" if first is None else f"{first:.2f}"
            line = (
                f"| {model} | {method} | {jax:.2f} | {candle} | {fused:.2f} | {first} | "
                f"{fused / jax:.2f} | {jax / jax_plain:.2f}x | {fused / fused_plain:.2f}x |"
            )
            if accumulate:
                patched = medians[(model, method, "accumulate")]
                line += f" {patched:.2f} | {patched / jax:.2f} |"
            lines.append(line)
    if threads == 1 and "mlp" in models:
        lines += ["", "Goals (MLP, one thread):", ""]
        plain = medians[("mlp", "plain", "fused")] / medians[("mlp", "plain", "jax")]
        met = "met" if plain <= PLAIN_GOAL else "not met"
        lines.append(f"- plain step {plain:.2f}x JAX's (goal <= {PLAIN_GOAL}x): {met}")
        for method, goal in METHOD_GOALS.items():
            ratio = medians[("mlp", method, "fused")] / medians[("mlp", "plain", "fused")]
            met = "met" if ratio <= goal else "not met"
            lines.append(f"- {method} {ratio:.2f}x plain (goal <= {goal}x): {met}")
        first = medians[("mlp", "fgm", "first-order")] / medians[("mlp", "plain", "first-order")]
        lines.append(f"- fgm with second order off: {first:.2f}x its plain step")
    lines += ["", "The trained Hutchinson step against JAX's, each as a multiple of its plain step:", ""]
    for model in models:
        jax = medians[(model, "hutchinson_1", "jax")] / medians[(model, "plain", "jax")]
        for method in ("hutchinson_1", "hutchinson_taylor"):
            ours = medians[(model, method, "fused")] / medians[(model, "plain", "fused")]
            met = "at or below" if ours <= jax else "above"
            lines.append(f"- {model}, {method}: {ours:.2f}x against JAX's {jax:.2f}x ({met})")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rust", required=True, help="the side_by_side bench executable")
    parser.add_argument("--python", required=True, help="the Python with JAX installed")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2, help="steps per timed request")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated, of " + ", ".join(MODELS),
    )
    parser.add_argument("--out", help="also write the tables to this markdown file")
    parser.add_argument(
        "--rust-accumulate",
        help="the bench built against candle storing first gradients (scripts/candle-accumulate.sh):"
        " measured as a further side",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help=f"run the workers without GLIBC_TUNABLES={MALLOC_TUNABLES}",
    )
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    rust = [args.rust, "--worker"]
    jax = [args.python, os.path.join(here, "side_by_side_jax.py")]
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}: use {', '.join(MODELS)}")
    sections = []
    for threads in [int(t) for t in args.threads.split(",")]:
        tuned = not args.default_malloc
        accumulate = [args.rust_accumulate, "--worker"] if args.rust_accumulate else None
        medians = measure(rust, jax, threads, args.rounds, args.steps, tuned, models, accumulate)
        sections.append(report(medians, threads, args.rounds, args.steps, tuned, models))
        print(sections[-1] + "\n", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
