#!/usr/bin/env python3
"""Execute every notebook headlessly with the evcxr kernel and fail on any sign of failure.

Usage: python3 notebooks/run.py OUT_DIR [NAME ...]
       NOTEBOOKS_DIR=DIR python3 notebooks/run.py OUT_DIR   (notebooks from another folder)

A notebook fails when a cell's reply is an error (a compile error, a panic: the prelude in
notebooks/evcxr aborts on panic, so the kernel reports the dead subprocess), when the kernel dies or
times out, when any output is an error, or when anything is written to stderr (an error returned by
`?`, a warning). Executed notebooks are written to OUT_DIR for render.py.

Why not nbclient: evcxr forwards the user code's stdout and stderr from a separate thread, so a line
can reach the client after the cell's `idle` status; nbclient then drops it, and an error returned by
`?` (which evcxr reports only on stderr) passes unseen on a loaded machine. This runner keeps reading
after `idle` until the kernel has been quiet for a while, and files every message under the cell its
parent header names, however late it comes.
"""
import glob
import os
import queue
import sys
import time

import nbformat
from jupyter_client.manager import KernelManager

HERE = os.path.dirname(os.path.abspath(__file__))
CELL_TIMEOUT_S = 1800
QUIET_AFTER_CELL_S = 0.5  # keep reading after `idle` until nothing came for this long
QUIET_AFTER_NOTEBOOK_S = 2.0


def problems(nb):
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                yield index, f"{out.get('ename', '')}: {out.get('evalue', '')}"
            elif out.output_type == "stream" and out.name == "stderr" and out.text.strip():
                yield index, "stderr: " + out.text.strip()


class Execution:
    """One kernel running one notebook; iopub messages filed by the cell that caused them."""

    def __init__(self, nb, folder):
        self.nb = nb
        self.cell_of = {}  # message id of an execute_request -> cell index
        self.idle = set()  # message ids whose `idle` status arrived
        env = dict(os.environ)
        # The allocator setting `cargo run`, `cargo test` and `cargo bench` get from .cargo/config.toml:
        # the kernel is not started by cargo, and without it step times drift with the heap's history.
        env.setdefault(
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:glibc.malloc.arena_max=1",
        )
        self.manager = KernelManager(kernel_name="rust")
        self.manager.start_kernel(cwd=folder, env=env)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=600)

    def close(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)

    def file(self, msg):
        parent = msg.get("parent_header", {}).get("msg_id")
        kind = msg["msg_type"]
        if parent not in self.cell_of:
            return
        if kind == "status" and msg["content"].get("execution_state") == "idle":
            self.idle.add(parent)
        elif kind in ("stream", "display_data", "execute_result", "error"):
            cell = self.nb.cells[self.cell_of[parent]]
            cell.outputs.append(nbformat.v4.output_from_msg(msg))

    def read_until_quiet(self, quiet_s, deadline, waiting_for=None):
        """Read iopub until `waiting_for` is idle (if given) and then nothing came for quiet_s."""
        last = time.time()
        while True:
            now = time.time()
            if now > deadline:
                raise TimeoutError(f"no reply within {CELL_TIMEOUT_S} s")
            done = waiting_for is None or waiting_for in self.idle
            if done and now - last >= quiet_s:
                return
            try:
                msg = self.client.get_iopub_msg(timeout=0.1)
            except queue.Empty:
                if not self.manager.is_alive():
                    raise RuntimeError("the kernel died")
                continue
            self.file(msg)
            last = time.time()

    def run(self):
        for index, cell in enumerate(self.nb.cells):
            if cell.cell_type != "code":
                continue
            cell.outputs = []
            msg_id = self.client.execute(cell.source, allow_stdin=False)
            self.cell_of[msg_id] = index
            deadline = time.time() + CELL_TIMEOUT_S
            self.read_until_quiet(QUIET_AFTER_CELL_S, deadline, waiting_for=msg_id)
            reply = self.client.get_shell_msg(timeout=max(1.0, deadline - time.time()))
            cell.execution_count = reply["content"].get("execution_count")
            if reply["content"].get("status") != "ok" and not any(
                out.output_type == "error" for out in cell.outputs
            ):
                cell.outputs.append(
                    nbformat.v4.new_output(
                        "error", ename="CellError", evalue="the kernel replied with an error", traceback=[]
                    )
                )
        self.read_until_quiet(QUIET_AFTER_NOTEBOOK_S, time.time() + CELL_TIMEOUT_S)


def execute(path, folder):
    """Executes one notebook; returns it and an error from the kernel or the clock, if any."""
    nb = nbformat.read(path, as_version=4)
    error = None
    execution = None
    try:
        execution = Execution(nb, folder)
        execution.run()
    except Exception as e:  # a dead kernel, a timeout
        error = f"{type(e).__name__}: {e}"
    finally:
        if execution is not None:
            execution.close()
    return nb, error


def main():
    out_dir = sys.argv[1]
    wanted = set(sys.argv[2:])
    os.makedirs(out_dir, exist_ok=True)
    os.environ["EVCXR_CONFIG_DIR"] = os.path.join(HERE, "evcxr")
    os.environ["CANDLE_GRAD_DO_NOT_DETACH"] = "1"
    failed = []
    folder = os.environ.get("NOTEBOOKS_DIR", HERE)
    for path in sorted(glob.glob(os.path.join(folder, "*.ipynb"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if wanted and name not in wanted:
            continue
        started = time.time()
        nb, error = execute(path, os.path.abspath(folder))
        found = list(problems(nb))
        seconds = time.time() - started
        nbformat.write(nb, os.path.join(out_dir, name + ".ipynb"))
        if error or found:
            failed.append(name)
            print(f"FAIL {name} ({seconds:.0f} s)")
            if error:
                print("   ", error[:2000])
            for index, text in found:
                print(f"    cell {index}: {text[:2000]}")
        else:
            print(f"ok   {name} ({seconds:.0f} s)")
        sys.stdout.flush()
    if failed:
        print("failed notebooks:", ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
