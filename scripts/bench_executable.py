"""Reads cargo's `--message-format=json` build messages on stdin and prints the executable of the
bench target named on the command line (nothing if it was not built):

    cargo bench -p advtrain --bench side_by_side --no-run --message-format=json |
        python3 scripts/bench_executable.py side_by_side
"""

import json
import sys

if len(sys.argv) != 2:
    sys.exit(__doc__)
for line in sys.stdin:
    message = json.loads(line)
    if (
        message.get("reason") == "compiler-artifact"
        and message["target"]["name"] == sys.argv[1]
        and message.get("executable")
    ):
        print(message["executable"])
