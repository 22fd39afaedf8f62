"""Patches a copy of candle-core's src/backprop.rs so that the first gradient reaching a node is
stored as it is, instead of being added into a freshly zero-filled tensor.

candle's backward pass accumulates every gradient with

    let sum_grad = grads.or_insert(arg)?;      // a zero-filled tensor when the slot is empty
    *sum_grad = sum_grad.add(&grad_arg)?;      // a second full pass, into a fresh allocation

so every gradient edge pays a zero fill and an add even when the sum has one term. This script
rewrites those call sites to `grads.accumulate(arg, &grad_arg)?`, which inserts the first gradient
and adds from the second on: the change proposed upstream in candle's pull requests #3578 and
#3822 (open at the time of writing). It is a measurement aid only (scripts/candle-accumulate.sh):
the library builds against candle as published. The rules that subtract or broadcast keep
candle's form.

    python3 scripts/candle_accumulate.py path/to/candle-core/src/backprop.rs
"""

import re
import sys

HELPER = '''
    /// The first gradient reaching `tensor` is stored as it is; later ones are added to it.
    /// (Patched in by advtrain's scripts/candle_accumulate.py, to measure the change.)
    fn accumulate(&mut self, tensor: &Tensor, grad: &Tensor) -> Result<()> {
        match self.0.entry(tensor.id()) {
            Entry::Occupied(mut entry) => {
                let sum = entry.get().add(grad)?;
                *entry.get_mut() = sum;
            }
            Entry::Vacant(entry) => {
                // Contiguous, as the sum candle builds is (a broadcast view is copied).
                entry.insert(grad.contiguous()?);
            }
        }
        Ok(())
    }
'''

# `let NAME = grads.or_insert(ARG)?;` then, possibly after one `let` line that does not use NAME,
# `*NAME = NAME.add(&GRAD)?` with GRAD an expression that does not use NAME either.
CALL_SITE = re.compile(
    r"let (?P<name>\w+) = grads\.or_insert\((?P<arg>\w+)\)\?;\n"
    r"(?P<between>[ \t]*let \w+ = [^\n]*;\n)?"
    r"(?P<indent2>[ \t]*)\*(?P=name) = (?P=name)\.add\(&(?P<grad>[^\n]+)\)\?;?(?=\n)"
)


def patch(source: str) -> tuple[str, int]:
    replaced = 0

    def replace(m: re.Match) -> str:
        nonlocal replaced
        name, arg = m.group("name"), m.group("arg")
        # The sum's shape is the argument's: `NAME.dims()` (the broadcasting rules) reads it.
        grad = m.group("grad").replace(f"{name}.dims()", f"{arg}.dims()")
        uses_name = re.compile(rf"\b{name}\b")
        if uses_name.search(m.group("between") or "") or uses_name.search(grad):
            return m.group(0)
        replaced += 1
        call = f"grads.accumulate({arg}, &{grad})?;"
        if m.group("between"):
            # The match starts after the first line's indent: keep the `let` line, then the call.
            return m.group("between").lstrip(" \t") + m.group("indent2") + call
        return call

    patched = CALL_SITE.sub(replace, source)
    anchor = "    fn or_insert(&mut self, tensor: &Tensor)"
    if anchor not in patched:
        sys.exit("candle_accumulate.py: GradStore::or_insert not found; the candle version changed")
    patched = patched.replace(anchor, HELPER.lstrip("\n") + "\n" + anchor, 1)
    return patched, replaced


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    with open(path) as f:
        source = f.read()
    if "fn accumulate(&mut self" in source:
        print(f"{path}: already patched", file=sys.stderr)
        return
    patched, count = patch(source)
    # candle 0.11.1 has 49 such call sites; far fewer means the pattern no longer matches its code.
    if count < 40:
        sys.exit(f"candle_accumulate.py: only {count} call sites matched; the candle version changed")
    with open(path, "w") as f:
        f.write(patched)
    print(f"{path}: {count} call sites now store their first gradient", file=sys.stderr)


if __name__ == "__main__":
    main()
