"""The server process of the NDIF harness: NDIF's own code serves nnsight requests.

Started by `ndif_harness.NdifServer` as `python server.py FD` (FD: its end of a socket
pair). `moe_interp` cannot be imported here (`no_moe_interp`); everything a request runs
arrives in the request. Each message is `(mode, metadata_json, payload)`, what nnsight's
`RemoteBackend` would POST (the `RequestModel` envelope and the serialized tracer); the
reply is `("ok", result_bytes, stats)` or `("error", text, exception_type)`.

The model actor's request path (`BaseModelDeployment.run`/`execute`, ndif 0.1.2) imports
Ray, accelerate and the object store at module level, so it is not imported; this file
does what it does around the block, calling ndif's functions for everything that touches
the request:

- the model is built as the actor builds it: `HuggingFaceModel.from_model_key(key,
  dispatch=True)`, gradients off; the request's `env` applied (`_remoteable_set_env`);
- `mode="execute"` (a trusted request, the in-process path): inside `nns.block_scope()`,
  `nns.prepare_traced_block(model, payload, compress, BackendRequestModel.deserialize)`
  then `nns.execute_traced_block(tracer, dtype)`; saves `torch.save`d with
  `util.cpu_pickle_module()`;
- `mode="sandbox"` (the default for untrusted requests): a runner process started by
  `sandbox.host.spawn(model_key=...)` builds the weightless meta model and runs the block
  (`sandbox.nns.run`); this process holds the real model and drives it with
  `sandbox.driver.SandboxDriver(model, dtype).pump(connection)`, as `SandboxHost.run_in_runner`
  does. One runner per model serves all of that model's requests (the production pool
  starts a fresh one per request: ~4 s each, too slow for a test); `nns.run` scopes
  each request's source caches itself;
- the result is zstd-compressed (level 3) when the request asked for compression, as
  `BaseModelDeployment.prepare_result` does;
- `mode="actor"`: the model actor's own request method, `BaseModelDeployment.run`, with Redis
  and the object store in memory (`actor.py`, `stores.py`); the reply is the frames the
  client's `/subscribe` websocket would receive. A `("get", url)` message downloads what a
  presigned url names from that object store.
"""

import io
import os
import sys
import tempfile
import threading
import time
import traceback

import no_moe_interp  # noqa: F401  (first: the server does not have moe_interp)

sys.path.extend(p for p in os.environ.get("NDIF_HARNESS_APPEND_PATH", "").split(os.pathsep) if p)

HERE = os.path.dirname(os.path.abspath(__file__))


def _runner_python() -> str:
    """An executable that `spawn` can use as `python`: runs ndif's runner module through
    `runner_main.py`, which hides `moe_interp` first."""
    directory = tempfile.mkdtemp(prefix="ndif-harness-")
    path = os.path.join(directory, "python")
    with open(path, "w") as handle:
        handle.write(f'#!/bin/sh\nexec "{sys.executable}" "{os.path.join(HERE, "runner_main.py")}" "$@"\n')
    os.chmod(path, 0o755)
    return path


class Server:
    def __init__(self) -> None:
        self.models: dict = {}
        self.runners: dict = {}
        self.runner_python = None
        self.actors: dict = {}
        self.services = None

    def model(self, key: str, warm: bool = True):
        from nnsight.modeling.huggingface import HuggingFaceModel

        if key not in self.models:
            model = HuggingFaceModel.from_model_key(key, dispatch=True)
            model._module.requires_grad_(False)
            self.models[key] = model
            if warm:
                self._warm(key)
        return self.models[key]

    def _warm(self, key: str) -> None:
        """Start the model's runner in the background (as ndif's `Pool` warms its runners)."""
        from ndif.services.ray.sandbox.host import spawn

        self.runner_python = self.runner_python or _runner_python()
        box: list = []

        def start() -> None:
            try:
                box.append(spawn(python=self.runner_python, model_key=key, timeout=300))
            except BaseException as error:  # reported by the first sandboxed request
                box.append(error)

        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        self.runners[key] = (thread, box)

    def runner(self, key: str):
        if key not in self.runners:
            self._warm(key)
        thread, box = self.runners[key]
        thread.join()
        if isinstance(box[0], BaseException):
            raise RuntimeError(f"the sandbox runner for {key} did not start") from box[0]
        return box[0]

    def serve(self, mode: str, metadata: str, payload: bytes) -> tuple:
        import torch
        import zstandard
        from ndif.common.schema.request import BackendRequestModel
        from ndif.services.ray.deployments.modeling.nns import block_scope

        request = BackendRequestModel.model_validate_json(metadata)
        request.payload = payload
        model = self.model(request.model_key, warm=mode != "actor")
        if mode == "actor":
            return self._actor(model, request)
        dtype = model._module.dtype
        model._remoteable_set_env(request.env)
        started = time.perf_counter()
        try:
            with block_scope():
                if mode == "execute":
                    data, stats = self._execute(model, request, dtype)
                elif mode == "sandbox":
                    data, stats = self._sandboxed(model, request, dtype)
                else:
                    raise ValueError(f"unknown mode {mode!r}: 'execute' or 'sandbox'")
        finally:
            model.interleaver.cancel()
        stats["seconds"] = time.perf_counter() - started
        stats["raw_result_bytes"] = len(data)
        if request.compress:
            data = zstandard.ZstdCompressor(level=3).compress(data)
        assert "moe_interp" not in sys.modules, "moe_interp was imported on the server"
        stats["torch_threads"] = torch.get_num_threads()
        stats["python"] = sys.version.split()[0]
        return data, stats

    def _execute(self, model, request, dtype) -> tuple:
        import torch
        from ndif.common.schema.request import BackendRequestModel
        from ndif.services.ray.deployments.modeling.nns import execute_traced_block, prepare_traced_block
        from ndif.services.ray.deployments.modeling.util import cpu_pickle_module

        tracer, deserialize_ms = prepare_traced_block(model, request.payload, request.compress,
                                                      BackendRequestModel.deserialize)
        saved = execute_traced_block(tracer, dtype)
        buffer = io.BytesIO()
        torch.save(saved, buffer, pickle_module=cpu_pickle_module())
        return buffer.getvalue(), {"tracer": type(tracer).__name__, "saved": sorted(saved)}

    def _sandboxed(self, model, request, dtype) -> tuple:
        from ndif.services.ray.sandbox.driver import SandboxDriver

        runner = self.runner(request.model_key)
        if runner.process.poll() is not None:
            raise RuntimeError(f"the sandbox runner exited with status {runner.process.returncode}")
        connection = _counting_connection().open(runner.path)
        logs: list = []
        try:
            connection.send((request.payload, request.compress, str(dtype), None, request.env))
            data, _ = SandboxDriver(model, dtype, on_log=logs.append).pump(connection)
        finally:
            connection.close()
        return data, {**connection.counts, "logs": logs}

    def _actor(self, model, request) -> tuple:
        """`BaseModelDeployment.run(request)`; returns the frames `/subscribe` would forward."""
        import torch
        from actor import Services, actor_class
        from ndif.common.providers.redis import RedisProvider

        self.services = self.services or Services()
        key = request.model_key
        if key not in self.actors:
            self.actors[key] = actor_class()(model, key)
        stored, operations = set(self.services.s3.objects), len(self.services.s3.operations)
        started = time.perf_counter()
        self.actors[key].serve(request)
        frames = self.services.frames(request.session_id)
        uploaded = {name: len(data) for (bucket, name), data in self.services.s3.objects.items()
                    if (bucket, name) not in stored}
        assert "moe_interp" not in sys.modules, "moe_interp was imported on the server"
        return frames, {"seconds": time.perf_counter() - started, "request_id": request.id,
                        "threshold": RedisProvider.max_publish_bytes(), "uploaded": uploaded,
                        "s3": [name for name, _ in self.services.s3.operations[operations:]],
                        "frames": [(type(f).__name__, len(f)) for f in frames],
                        "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0]}

    def download(self, url: str):
        return self.services.s3.get(url) if self.services else None

    def close(self) -> None:
        # a runner still starting is waited for and stopped (ndif's die_with_parent polls, and a
        # runner that outlived this process was seen still running minutes later)
        for thread, box in self.runners.values():
            thread.join(timeout=60)
            if box and not isinstance(box[0], BaseException):
                box[0].stop()


def _counting_connection():
    """ndif's host-side `Connection`, counting what crosses the runner socket: `resume` (host ->
    runner RESUME messages: each is one round trip, answered by a PARK), `source` (SOURCE
    control parks among them), `interleave` (model calls), bytes each way."""
    from ndif.services.ray.sandbox.host import Connection
    from ndif.services.ray.sandbox.protocol import unpack

    def is_source(park) -> bool:
        return park is not None and park[0] == "SOURCE"

    class Counting(Connection):
        def __init__(self, sock) -> None:
            super().__init__(sock)
            self.counts = dict.fromkeys(("resume", "source", "interleave", "to_runner_bytes", "from_runner_bytes"), 0)

        def send(self, value) -> None:
            self.counts["resume"] += isinstance(value, tuple) and value[:1] == ("RESUME",)
            super().send(value)

        def send_raw(self, data: bytes) -> None:
            self.counts["to_runner_bytes"] += len(data)
            super().send_raw(data)

        def recv(self, timeout=None):
            raw = self.recv_raw(timeout)
            self.counts["from_runner_bytes"] += len(raw)
            values, kwargs = unpack(raw, self.map_location)
            if values[0] == "INTERLEAVE":
                self.counts["interleave"] += 1
                self.counts["source"] += sum(map(is_source, values[2]))
            elif values[0] == "PARK":
                self.counts["source"] += is_source(values[2])
            return values, kwargs

    return Counting


def main(fd: int) -> None:
    from multiprocessing.connection import Connection

    import torch

    torch.set_num_threads(int(os.environ.get("NDIF_HARNESS_THREADS", "1")))
    channel = Connection(fd)
    server = Server()
    try:
        while True:
            message = channel.recv()
            if message is None:
                return
            if message[0] == "get":
                channel.send(("ok", server.download(message[1]), {}))
                continue
            if message[0] == "probe":
                from actor import importable

                channel.send(("ok", {"python": sys.version.split()[0], "actor": importable()}))
                continue
            try:
                data, stats = server.serve(*message)
                channel.send(("ok", data, stats))
            except BaseException as error:  # everything goes back to the client, as NDIF's ERROR does
                channel.send(("error", "".join(traceback.format_exception(error)), type(error).__name__))
    finally:
        server.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
