"""``python -m effzoo.bench.point SPEC_JSON``: measure one point, print its result as JSON.

The harness's ``--isolation subprocess`` runs this per point; it also reproduces a single point
by hand (copy the ``spec`` of a point from a run's JSON lines file). The result is the last
line of stdout; errors go to stderr with exit status 1.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m effzoo.bench.point SPEC_JSON", file=sys.stderr)
        return 2
    from .measure import measure_point

    try:
        result = measure_point(json.loads(argv[0]))
    except Exception as error:  # noqa: BLE001 - one line for the harness to record
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
