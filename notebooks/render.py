#!/usr/bin/env python3
"""Render executed notebooks into the book: one page per notebook, figures as SVG files.

Usage: python3 notebooks/render.py EXECUTED_DIR BOOK_SRC_DIR

Code cells become `rust,ignore` blocks, text outputs `text` blocks, and every SVG figure is written to
BOOK_SRC_DIR/figures/<notebook>_<k>.svg (k counts figures from 1), which the chapters embed.
"""
import glob
import os
import re
import sys

import nbformat


def svg_of(out):
    data = out.get("data", {})
    if "image/svg+xml" in data:
        return data["image/svg+xml"]
    html = data.get("text/html", "")
    match = re.search(r"<svg.*</svg>", html, re.S)
    return match.group(0) if match else None


def text_of(out):
    if out.output_type == "stream":
        return out.text
    return out.get("data", {}).get("text/plain")


def main():
    executed, book = sys.argv[1], sys.argv[2]
    os.makedirs(os.path.join(book, "notebooks"), exist_ok=True)
    os.makedirs(os.path.join(book, "figures"), exist_ok=True)
    for path in sorted(glob.glob(os.path.join(executed, "*.ipynb"))):
        name = os.path.splitext(os.path.basename(path))[0]
        nb = nbformat.read(path, as_version=4)
        lines = [f"<!-- Rendered from notebooks/{name}.ipynb as executed by CI; do not edit. -->\n"]
        figure = 0
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                lines.append(cell.source + "\n")
                continue
            lines.append("```rust,ignore\n" + cell.source + "\n```\n")
            pending = ""  # consecutive stream outputs (evcxr sends stdout in pieces) become one block
            for out in cell.get("outputs", []):
                if out.output_type == "stream":
                    pending += out.text
                    continue
                if pending.strip():
                    lines.append("```text\n" + pending.rstrip() + "\n```\n")
                pending = ""
                svg = svg_of(out)
                if svg:
                    figure += 1
                    file = f"{name}_{figure}.svg"
                    with open(os.path.join(book, "figures", file), "w") as f:
                        f.write(svg)
                    lines.append(f"![figure {figure}](../figures/{file})\n")
                    continue
                text = text_of(out)
                if text and text.strip():
                    lines.append("```text\n" + text.rstrip() + "\n```\n")
            if pending.strip():
                lines.append("```text\n" + pending.rstrip() + "\n```\n")
        with open(os.path.join(book, "notebooks", name + ".md"), "w") as f:
            f.write("\n".join(lines))
        print(f"rendered {name}: {figure} figures")


if __name__ == "__main__":
    main()
