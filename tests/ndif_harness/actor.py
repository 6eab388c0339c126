"""NDIF's model actor serving a request: `BaseModelDeployment.run` (ndif 0.1.2), unmodified.

`run()` is where the route back is chosen (ndif/services/ray/deployments/modeling/base.py,
`run`): after the block ran, `limit = RedisProvider.max_publish_bytes()`, `blob =
self.prepare_result(request, data)` (zstd when the request asked), then a blocking request
whose blob fits (`len(blob) <= limit`) gets it back inline, a pickled COMPLETED response
through Redis; anything larger goes through the object store, `self.upload_bytes` =
`ObjectStoreProvider.put` (boto3's `upload_fileobj`, multipart over 8 MiB) and
`presigned_get`, and the COMPLETED response carries the presigned url instead.

What is not ndif's own here, and why:

- `HarnessActor.__init__`: the real constructor needs a Ray runtime context and loads the
  weights onto GPUs; this one sets the attributes `run` reads, with the harness's model.
  `cleanup` is `BaseModelDeployment.cleanup` without its three CUDA calls (a CPU has none).
- the object store: the real boto3 clients `ObjectStoreProvider.connect()` built, with their
  HTTP send answered in memory (`stores.MemoryS3`, a botocore `before-send` handler): the
  narrowest seam, below ndif, boto3 and s3transfer, above the socket.
- Redis: `RedisProvider.sync_client` is `stores.MemoryRedis` (stock redis:7 limits, so
  ndif's own `max_publish_bytes` derives the 8 MiB cap from them).
- `frames()`: what the API's `/subscribe` websocket forwards of the published messages
  (ndif/services/api/app.py, `subscribe.forward`: a JSON response as a text frame, a
  `RESULT_NOTICE` as the pickled response stored under its key, as a binary frame). The API
  app needs fastapi, which the request path does not; its 10 lines are repeated here.

Needs what base.py imports: ray, accelerate, boto3, redis (ndif's declared dependencies and
its `ray` extra).
"""

import asyncio
import gc
from typing import Any

SESSION = "harness-session"


def importable() -> str:
    """'' if the actor can run here, else why not."""
    try:
        from ndif.services.ray.deployments.modeling import base  # noqa: F401
    except Exception as error:  # ImportError, or a provider failing at import
        return f"ndif's model actor (deployments/modeling/base.py) cannot be imported: {error!r}"
    return ""


class Services:
    """The in-memory Redis and S3 under ndif's providers, installed once per process."""

    def __init__(self) -> None:
        from ndif.common.providers.objectstore import ObjectStoreProvider
        from ndif.common.providers.redis import RedisProvider

        from stores import MemoryRedis, MemoryS3

        self.s3, self.redis = MemoryS3(), MemoryRedis()
        # the clients ndif's ObjectStoreProvider.connect() built at import (no socket until a call)
        self.s3.attach(ObjectStoreProvider.client)
        self.s3.attach(ObjectStoreProvider.public_client)
        RedisProvider.sync_client = self.redis
        RedisProvider._max_publish_bytes = None
        self.bucket = ObjectStoreProvider.bucket

    def frames(self, session: str) -> list:
        """The messages published on `session`, as `/subscribe` forwards them, in order."""
        from ndif.common.schema.request import RESULT_NOTICE

        out = []
        for channel, message in self.redis.published:
            if channel != session:
                continue
            payload = message.encode() if isinstance(message, str) else message
            if payload[:1] == b"{":
                out.append(payload.decode())
            elif payload[:1] == RESULT_NOTICE:
                blob = self.redis.getdel(payload[1:])
                if blob is None:
                    raise RuntimeError(f"result {payload[1:]!r} expired before delivery")
                out.append(blob)
            else:
                out.append(payload)
        self.redis.published = [(c, m) for c, m in self.redis.published if c != session]
        return out


def actor_class():
    from ndif.services.ray.deployments.modeling.base import BaseModelDeployment

    class HarnessActor(BaseModelDeployment):
        """`BaseModelDeployment` on the harness's model (see the module docstring)."""

        def __init__(self, model: Any, model_key: str, execution_timeout: float = 600.0) -> None:
            self.model_key = model_key
            self.execution_timeout = execution_timeout
            self.gpu_mem_bytes_by_id: dict = {}
            self.dtype = model._module.dtype
            self.dtype_name = str(self.dtype).removeprefix("torch.")
            self.kwargs: dict = {}
            self.model = model
            self.cached = False
            self.kill_switch = asyncio.Event()
            self.kill_reason = None
            self.execution_ident = None
            self.loop = asyncio.new_event_loop()  # one loop: kill_switch binds to the first it waits in

        def cleanup(self) -> None:
            self.kill_switch.clear()
            self.kill_reason = None
            self.execution_ident = None
            self.model.interleaver.cancel()
            gc.collect()

        def serve(self, request: Any) -> None:
            self.loop.run_until_complete(self.run(request))

    return HarnessActor
