"""Serving at scale on NVIDIA Triton Inference Server (DESIGN.md §10): a model repository written from an engine
directory, and the ``tritonserver`` that ``nvidia-pytriton`` ships, started and stopped cleanly.

    from vared2.serve import write_repository, TritonServer
    write_repository("artifacts/engines/demo", "repo")
    with TritonServer("repo") as server:    # 127.0.0.1, free ports
        print(server.http_url, server.grpc_url)

Imports the runtime only (never torch); Triton's Python backend imports :mod:`vared2.serve.triton_models`.
"""

from .repository import ROUTER, RepositoryOptions, write_repository
from .server import TritonNotInstalled, TritonServer, TritonServerError, find_tritonserver

__all__ = [
    "ROUTER",
    "RepositoryOptions",
    "TritonNotInstalled",
    "TritonServer",
    "TritonServerError",
    "find_tritonserver",
    "write_repository",
]
