#!/usr/bin/env python3
"""Execute every notebook headlessly with the evcxr kernel and fail on any sign of failure.

Usage: python3 notebooks/run.py OUT_DIR [NAME ...]
       NOTEBOOKS_DIR=DIR python3 notebooks/run.py OUT_DIR   (notebooks from another folder)

A notebook fails when nbclient raises (a compile error, a dead kernel after a panic: the prelude in
notebooks/evcxr aborts on panic), when any output is an error, or when anything is written to stderr
(an error returned by `?`, a warning). Executed notebooks are written to OUT_DIR for render.py.
"""
import glob
import os
import sys
import time

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))


def problems(nb):
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                yield index, f"{out.get('ename', '')}: {out.get('evalue', '')}"
            elif out.output_type == "stream" and out.name == "stderr" and out.text.strip():
                yield index, "stderr: " + out.text.strip()


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
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            timeout=1800,
            kernel_name="rust",
            allow_errors=True,
            resources={"metadata": {"path": folder}},
        )
        started = time.time()
        error = None
        try:
            client.execute()
        except Exception as e:  # a dead kernel, a timeout
            error = f"{type(e).__name__}: {e}"
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
