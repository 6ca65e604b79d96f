"""Command-line tools: `python -m lm.main.<tool>`.

Started that way (the package is imported while `sys.argv[0]` is still "-m"), a CPU-only run
gets lm's glibc allocator settings before jax is imported (see `lm.host_memory`), and
`train_lm` pauses Python's garbage collector until its first step has run (see
`lm.startup_gc`) and, on the CPU, faults in its first step's memory ahead of it (see
`lm.prefault`).
"""

import sys

if sys.argv[:1] == ["-m"]:
    from lm.host_memory import tune_host_allocator

    tune_host_allocator()

    from lm.startup_gc import pause_for_command

    pause_for_command(getattr(sys, "orig_argv", ()))

    from lm.prefault import start_for_command

    start_for_command(getattr(sys, "orig_argv", ()))
