"""A test backend that sends nnsight's own remote request to NDIF's own server code.

- `NdifServer`: a separate process (`server.py`) that runs the `ndif` package's request
  path on a real model, in a process where `moe_interp` cannot be imported. One process
  serves every request of a test module (models and sandbox runners are kept).
- `NdifBackend`: nnsight's `RemoteBackend` (what `remote=True` builds: same model key, env,
  compression, `pull_env` registration and `RequestModel.serialize`), with only the
  transport replaced: the envelope and payload go to the `NdifServer` instead of an HTTP
  POST, and the returned bytes go through `RemoteBackend.finalize` (decompress, `torch.load`)
  and back into the caller's frame exactly as from NDIF.
- `ndif_available()`: why the server cannot run here, or None.

The model must be one the server can rebuild from its key: `mi.load(directory)` of a saved
checkpoint. nnsight canonicalises a hub id through the Hub when it mints a key; a local
directory is its own canonical id (`local_model_key`), so no network is touched.
"""

import contextlib
import functools
import os
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Any, Optional

import torch
from nnsight.intervention.backends.remote import RemoteBackend, RemoteError

HERE = os.path.dirname(os.path.abspath(__file__))

# Where `.ci/run` (and `pip install -e ".[ndif-test]"` users) put the wheel: Python >= 3.12
# is declared, so it is installed without dependencies into its own directory.
NDIF_TARGET = os.environ.get("NDIF_HARNESS_TARGET", os.path.join(os.path.dirname(os.path.dirname(HERE)), ".ndif"))
# What ndif's model actor imports beyond the wheel (ray, accelerate, boto3, redis and those of
# their dependencies this environment lacks), installed by `.ci/run` without touching it.
ACTOR_DEPS = os.path.join(NDIF_TARGET, "actor")


_MODULES = ("ndif/common/schema/request.py", "ndif/services/ray/deployments/modeling/nns.py",
            "ndif/services/ray/sandbox/driver.py", "ndif/services/ray/sandbox/runner.py")


def ndif_path() -> Optional[str]:
    """Where the `ndif` package is: '' if it is installed in this environment, else
    `NDIF_TARGET` if the wheel was unpacked there, else None. (Found, not imported: the
    server process imports it, and fails the tests if it cannot.)"""
    import importlib.util

    spec = importlib.util.find_spec("ndif")
    if spec is not None and spec.submodule_search_locations:
        root = os.path.dirname(list(spec.submodule_search_locations)[0])
        if all(os.path.exists(os.path.join(root, m)) for m in _MODULES):
            return ""
    if all(os.path.exists(os.path.join(NDIF_TARGET, m)) for m in _MODULES):
        return NDIF_TARGET
    return None


def ndif_version(path: str) -> str:
    """The version of the `ndif` distribution at `path` ('' : this environment's)."""
    from importlib.metadata import distributions

    found = [d.version for d in distributions(**({"path": [path]} if path else {})) if d.metadata["Name"] == "ndif"]
    return found[0] if found else "unknown"


def local_model_key(model: Any) -> str:
    """`model.to_model_key()` for a model loaded from a local directory, without the Hub."""
    from nnsight.modeling import huggingface

    huggingface._ID_CACHE.setdefault(model.repo_id, model.repo_id)
    return model.to_model_key()


class NdifServer:
    """The server process; `call(mode, metadata, payload)` serves one request.

    `python`: the interpreter that runs it (default: this one), e.g. a Python 3.12 virtual
    environment with ndif installed (`path=""`) while the client stays on this Python.
    `extra_paths`: directories the server searches after its site-packages (`ACTOR_DEPS`).
    """

    def __init__(self, path: str, python: Optional[str] = None, extra_paths: tuple = ()) -> None:
        ours, theirs = socket.socketpair()
        env = {**os.environ, "NDIF_HARNESS_THREADS": str(torch.get_num_threads())}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH", "")) if p)
        # after site-packages (server.py appends them): they add what is missing, never shadow
        env["NDIF_HARNESS_APPEND_PATH"] = os.pathsep.join(extra_paths)
        # Runners inherit the host's OMP_NUM_THREADS (ndif's RUNNER_ENV): same threads as here.
        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
        command = [python or sys.executable, os.path.join(HERE, "server.py"), str(theirs.fileno())]
        self.process = subprocess.Popen(command, pass_fds=[theirs.fileno()], env=env, cwd=os.path.dirname(HERE))
        theirs.close()
        self.socket = ours
        self.channel = Connection(os.dup(ours.fileno()))

    def call(self, mode: str, metadata: str, payload: bytes) -> tuple:
        self.channel.send((mode, metadata, payload))
        status, *rest = self.channel.recv()
        if status == "error":
            raise RemoteError(f"{rest[1]} on the NDIF server:\n{rest[0]}")
        return tuple(rest)

    def probe(self) -> dict:
        """The server's Python version, and why ndif's model actor cannot run there ('' : it can)."""
        self.channel.send(("probe",))
        return self.channel.recv()[1]

    def download(self, url: str) -> Optional[bytes]:
        """The object a presigned `url` names in the server's object store (None: none)."""
        self.channel.send(("get", url))
        return self.channel.recv()[1]

    def close(self) -> None:
        try:
            self.channel.send(None)
            self.process.wait(timeout=30)
        except Exception:
            self.process.kill()
        self.channel.close()
        self.socket.close()


class NdifBackend(RemoteBackend):
    """nnsight's `RemoteBackend` for `model`, served by `server` in `mode` ("execute"/"sandbox"/"actor").

    After a request: `request_bytes` (the payload as sent), `result_bytes` (as returned),
    `stats` (the server's counts), `requests` (how many were sent). In "actor" mode also
    `frames` (what the websocket received) and `downloads` (`(url, bytes)` per presigned GET).
    """

    def __init__(self, model: Any, server: NdifServer, mode: str = "execute") -> None:
        RemoteBackend.__init__(self, local_model_key(model), host="http://ndif.invalid",
                               env=model._remoteable_get_env())
        self.server, self.mode = server, mode
        self.requests = 0
        self.stats: dict = {}

    def request(self, request: Any, tracer: Any) -> Any:
        blob = self._serialize(tracer)
        self.requests += 1
        self.request_bytes = len(blob)
        if self.mode == "actor":
            return self._through_actor(request, blob)
        data, self.stats = self.server.call(self.mode, request.metadata(), blob)
        self.result_bytes = len(data)
        return self.finalize(data)

    def _through_actor(self, request: Any, blob: bytes) -> Any:
        """`RemoteBackend.request` once its websocket is open: every frame the server's
        `/subscribe` would forward goes through nnsight's `parse` and `handle`; `handle`
        downloads a url's result with httpx (`download_result`), its transport answered by the
        server's object store (`_object_store_transport`)."""
        from nnsight.schema.response import Status

        request.session_id = "harness-session"  # a blocking request: the inline route is open to it
        self.frames, self.stats = self.server.call("actor", request.metadata(), blob)
        self.downloads: list = []
        with self._object_store_transport():
            for message in self.frames:
                response = self.parse(message)
                result = self.handle(response)
                if response.status == Status.COMPLETED:
                    self.result_bytes = self.downloads[-1][1] if self.downloads else len(message)
                    return result
        raise RemoteError("the model actor published no COMPLETED response")

    @contextlib.contextmanager
    def _object_store_transport(self):
        """`httpx.Client` built with a transport that fetches from the server's object store:
        the seam under nnsight's `download_result` (its GET, streaming, progress bar run)."""
        import httpx

        def fetch(request: "httpx.Request") -> "httpx.Response":
            data = self.server.download(str(request.url))
            self.downloads.append((str(request.url), None if data is None else len(data)))
            if data is None:
                return httpx.Response(404)
            return httpx.Response(200, content=data, headers={"Content-Length": str(len(data))})

        real = httpx.Client
        httpx.Client = functools.partial(real, transport=httpx.MockTransport(fetch))
        try:
            yield
        finally:
            httpx.Client = real
