"""One process-wide ONNX Runtime thread pool shared by every session of a runtime (``shared_thread_pool=True``).

A runtime holds one session per engine and runs them one after another. With a pool per session, the idle
pools' threads must not spin (they would take the cores from the busy session), so every parallel op pays a
wake-up — which is most of the time of a small bucket's hundreds of small ops. One pool for all sessions has
no idle competitors and spins: on the 2-core test machine the demo's buckets ran 8–24 % faster and the full-size
model's small buckets 5–10 % (docs/runtime.md). But ONNX Runtime's global pool belongs to the process: it is
created once, at one size, and cannot be replaced — so it is opt-in, and a second runtime in the same process
that asks for another size is an error rather than a silent change of its thread count.
"""

from __future__ import annotations

import os
import threading

from vared2.formats.errors import InputError

_lock = threading.Lock()
_threads: int | None = None


def shared_pool_threads(threads: int | None) -> int:
    """Create this process's shared intra-op pool with ``threads`` threads (None: one per logical CPU) on first use
    and return its size; a ``ValueError`` if it already exists with another size (or was made elsewhere)."""
    global _threads
    import onnxruntime as ort

    wanted = threads or os.cpu_count() or 1
    with _lock:
        if _threads is None:
            try:
                ort.set_global_thread_pool_sizes(wanted, 1)
            except Exception as error:  # ORT's Fail: another component created the process's pools first
                raise InputError(
                    f"shared_thread_pool: ONNX Runtime's process-wide thread pool already exists ({error}); "
                    "open the runtime without shared_thread_pool"
                ) from None
            _threads = wanted
        elif threads is not None and threads != _threads:
            raise InputError(
                f"shared_thread_pool: this process's shared ONNX Runtime thread pool has {_threads} thread(s) and "
                f"cannot be resized to {threads}; use threads={_threads}, a separate process, or per-session pools"
            )
        return _threads


def check_per_session_pools() -> None:
    """Once this process runs the shared pool, ONNX Runtime refuses sessions with pools of their own (it fails deep
    in session creation); say so, and what to do, before trying."""
    if _threads is not None:
        raise InputError(
            f"this process already runs the shared ONNX Runtime thread pool ({_threads} thread(s), opened by a runtime "
            "with shared_thread_pool=True), and ONNX Runtime then refuses sessions with their own threads: open this "
            "one with shared_thread_pool=True too, or in a separate process"
        )
