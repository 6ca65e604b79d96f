"""Two JAX processes on localhost: each loader process reads only the rows it holds."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.entry

WORKER = r"""
import json, os, sys
pid, port = int(sys.argv[1]), sys.argv[2]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
import haliax as hax
import numpy as np
from jax.sharding import Mesh
from lm.data import DataLoader, ListDataset
from lm.schedule import BatchSchedule, ScheduleStep

class Recording(ListDataset):
    requested = []
    def get_batch(self, indices):
        self.requested.append(sorted(indices))
        return super().get_batch(indices)

Pos = hax.Axis("position", 3)
ds = Recording([{"x": hax.NamedArray(np.full(3, i, np.int32), (Pos,))} for i in range(100)])
mesh = Mesh(np.array(jax.devices()).reshape(1, 8, 1), ("replica", "data", "model"))
schedule = BatchSchedule([ScheduleStep(0, 8), ScheduleStep(2, 16)])
loader = DataLoader(ds, schedule, mesh=mesh, axis_mapping={"batch": ("replica", "data")})
it = loader.iter_from_step(1)
shapes, held = [], []
for _ in range(2):
    arr = next(it)["x"].array
    shapes.append(list(arr.shape))
    held.append(sorted({int(np.asarray(s.data)[r, 0]) for s in arr.addressable_shards
                        for r in range(s.data.shape[0])}))
it.close()
print("RESULT " + json.dumps({"requested": ds.requested[:2], "held": held, "shapes": shapes}))
jax.distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_each_process_loads_only_its_rows(tmp_path, subprocess_env):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), port],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT ") :]))
    # Step 1: examples 8..15 (batch 8); step 2: examples 16..31 (batch 16). Process 0 holds
    # the first half of each batch (devices 0-3), process 1 the second half.
    assert results[0]["requested"] == [list(range(8, 12)), list(range(16, 24))]
    assert results[1]["requested"] == [list(range(12, 16)), list(range(24, 32))]
    for r in results:
        assert r["shapes"] == [[8, 3], [16, 3]]
        assert r["held"] == r["requested"]
