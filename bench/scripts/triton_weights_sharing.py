"""How much of ``weights.bin`` each process of a served repository holds, and how much they hold together.

    .venv-triton/bin/python bench/scripts/triton_weights_sharing.py ENGINE_DIR [--instances 2] [--batches 20]

Serves ENGINE_DIR's repository on 127.0.0.1, sends ``--batches`` random batches (every bucket in turn, so every
engine touches its weights), then reads ``/proc/PID/smaps`` of the server's process group: per process the
resident size (Rss) and proportional share (Pss) of its ``weights.bin`` mappings. Pss adds up to what the
weights cost the host: each page once when the processes share the file's pages, Rss's sum when they do not.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from vared2.formats.manifest import Manifest
from vared2.serve import RepositoryOptions, TritonServer, write_repository
from vared2.serve.server import group_members, process_role


def weights_kb(pid: int) -> tuple[int, int]:
    """(Rss, Pss) in kB of the ``weights.bin`` mappings of process ``pid``."""
    rss = pss = 0
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and not head.endswith(":"):  # a mapping's header line: "start-end perms … path"
            inside = line.rstrip().endswith("/weights.bin")
        elif inside and line.startswith("Rss:"):
            rss += int(line.split()[1])
        elif inside and line.startswith("Pss:"):
            pss += int(line.split()[1])
    return rss, pss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine_dir", type=Path)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    import tritonclient.grpc as grpc

    manifest = Manifest.load(args.engine_dir)
    spec = manifest.model
    shape = [manifest.max_batch, spec.frames, spec.size, spec.size, 3]
    with tempfile.TemporaryDirectory() as work:
        repo = write_repository(args.engine_dir, Path(work) / "repo", RepositoryOptions(instances=args.instances))
        with TritonServer(repo) as server:
            client = grpc.InferenceServerClient(server.grpc_url)
            rng = np.random.default_rng(0)
            for i in range(args.batches):
                tensor = grpc.InferInput("clip", shape, "UINT8")
                tensor.set_data_from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
                client.infer("vared2", [tensor], parameters={"bucket": i % manifest.num_buckets})
            client.close()
            assert server.process is not None
            total = [0, 0]
            for pid in sorted(group_members(server.process.pid)):
                role = process_role(pid)
                rss, pss = weights_kb(pid)
                total[0] += rss
                total[1] += pss
                print(f"{role:14s} pid {pid:7d}  weights.bin Rss {rss:8d} kB  Pss {pss:8d} kB")
    size = (args.engine_dir / (manifest.weights.file if manifest.weights else "weights.bin")).stat().st_size
    print(f"all processes: Rss {total[0]} kB, Pss {total[1]} kB (the file: {size // 1024} kB)")


if __name__ == "__main__":
    main()
