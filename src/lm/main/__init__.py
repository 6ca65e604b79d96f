"""Command-line tools: `python -m lm.main.<tool>`.

Started that way (the package is imported while `sys.argv[0]` is still "-m"), a CPU-only run
gets lm's glibc allocator settings before jax is imported (see `lm.host_memory`).
"""

import sys

if sys.argv[:1] == ["-m"]:
    from lm.host_memory import tune_host_allocator

    tune_host_allocator()
