"""``effzoo bench``: one speed and memory harness that every variant plugs into.

- :mod:`.implementations`: the registry (name -> builders) of everything compared: every effzoo
  variant, ``bert_sdpa``, the no-attention ``floor``, Transformers' own efficient models.
- :mod:`.measure`: one point inside its own process (warm-up, timed repetitions, peak memory,
  CPU contention); :mod:`.runner` starts those processes; :mod:`.point` is the command form.
- :mod:`.harness`: the sweep, the time budget, ratios, slopes and the JSON lines file.
- :mod:`.report`: markdown tables and PNG plots. :mod:`.cli`: the ``bench`` subcommand.

See ``docs/benchmarks.md`` for how to run it and how to read it.
"""

from .harness import BenchOptions, BenchRun, Selection, read_run, run_benchmark
from .implementations import Implementation, NoTokenMixing, Task, Workload, get_implementation, implementations

__all__ = [
    "BenchOptions",
    "BenchRun",
    "Implementation",
    "NoTokenMixing",
    "Selection",
    "Task",
    "Workload",
    "get_implementation",
    "implementations",
    "read_run",
    "run_benchmark",
]
