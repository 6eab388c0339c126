"""The two services NDIF's model actor talks to, in memory, under ndif's own provider code.

- `MemoryS3`: an S3 bucket behind boto3's HTTP send. `attach(client)` registers a botocore
  `before-send` handler on a real boto3 client: a handler that returns a response ends the
  request there (botocore's `Endpoint._do_get_response`), so everything above the socket runs
  as in production (ndif's `ObjectStoreProvider.put`/`presigned_get`, s3transfer's multipart
  upload, SigV4 signing, XML parsing of the answers) and no connection is opened. It answers
  the S3 operations that path uses (HeadBucket, CreateBucket, PutObject, CreateMultipartUpload,
  UploadPart, CompleteMultipartUpload, AbortMultipartUpload, GetObject), records each, and
  serves a stored object to a presigned GET (`get(url)`), checking the url carries a SigV4
  signature for this bucket and key.
- `MemoryRedis`: what ndif's `RedisProvider.sync_client` is asked by the actor's request path
  (`config_get`, `publish`, `pipeline().set/publish/execute`, `getdel`, `delete`), recording
  every message published per channel. `config_get("client-output-buffer-limit")` answers
  stock Redis 7's limits (pubsub 32 MiB hard, 8 MiB soft) unless told otherwise.
"""

import hashlib
import io
import re
import uuid
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlsplit

# `CONFIG GET client-output-buffer-limit` of a stock redis:7 (the values ndif's docs name)
STOCK_REDIS_LIMITS = "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60"


class _Raw(io.BytesIO):
    """The `raw` of a botocore `AWSResponse`: a stream with `stream()`, as urllib3's is."""

    def stream(self, amt: int = 1 << 16, decode_content: Optional[bool] = None):
        while chunk := self.read(amt):
            yield chunk


def _body(request: Any) -> bytes:
    body = request.body
    if body is None:
        return b""
    if hasattr(body, "read"):
        body = body.read()
    body = bytes(body) if not isinstance(body, bytes) else body
    if "aws-chunked" in request.headers.get("Content-Encoding", ""):
        body = _unchunk(body)
    return body


def _unchunk(data: bytes) -> bytes:
    """Decode an `aws-chunked` body (hex size[;ext]\\r\\n data \\r\\n ... 0\\r\\n trailers)."""
    out, at = bytearray(), 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[end + 2:end + 2 + size]
        at = end + 2 + size + 2


class MemoryS3:
    """An S3 endpoint in memory (see the module docstring)."""

    def __init__(self) -> None:
        self.buckets: set = set()
        self.objects: dict = {}      # (bucket, key) -> bytes
        self.uploads: dict = {}      # upload id -> {part number: bytes}
        self.operations: list = []   # (operation name, bytes received), in order
        self.downloads: list = []    # (key, bytes served) per presigned GET

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-send.s3", self._send)

    def _send(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        parts = urlsplit(request.url)
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        query = parse_qs(parts.query, keep_blank_values=True)
        method = request.method
        status, headers, body = 200, {}, b""
        if not key:
            if method == "HEAD":
                name, status = "HeadBucket", 200 if bucket in self.buckets else 404
            elif method == "PUT":
                name = "CreateBucket"
                self.buckets.add(bucket)
            else:
                raise NotImplementedError(f"MemoryS3: {method} {request.url}")
        elif method == "PUT" and "partNumber" in query:
            name, data = "UploadPart", _body(request)
            self.uploads[query["uploadId"][0]][int(query["partNumber"][0])] = data
            headers["ETag"] = f'"{hashlib.md5(data).hexdigest()}"'
        elif method == "PUT":
            name, data = "PutObject", _body(request)
            self.objects[bucket, key] = data
            headers["ETag"] = f'"{hashlib.md5(data).hexdigest()}"'
        elif method == "POST" and "uploads" in query:
            name, upload = "CreateMultipartUpload", uuid.uuid4().hex
            self.uploads[upload] = {}
            body = (f"<InitiateMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{key}</Key>"
                    f"<UploadId>{upload}</UploadId></InitiateMultipartUploadResult>").encode()
        elif method == "POST" and "uploadId" in query:
            name, upload = "CompleteMultipartUpload", query["uploadId"][0]
            listed = [int(n) for n in re.findall(rb"<PartNumber>(\d+)</PartNumber>", _body(request))]
            parts_ = self.uploads.pop(upload)
            assert listed == sorted(parts_), (listed, sorted(parts_))
            self.objects[bucket, key] = b"".join(parts_[n] for n in listed)
            body = (f"<CompleteMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{key}</Key>"
                    f'<ETag>"{uuid.uuid4().hex}-{len(listed)}"</ETag></CompleteMultipartUploadResult>').encode()
        elif method == "DELETE" and "uploadId" in query:
            name = "AbortMultipartUpload"
            self.uploads.pop(query["uploadId"][0], None)
            status = 204
        elif method == "GET":
            name, body = "GetObject", self.objects.get((bucket, key), b"")
            status = 200 if (bucket, key) in self.objects else 404
        else:
            raise NotImplementedError(f"MemoryS3: {method} {request.url}")
        self.operations.append((name, len(_body(request)) if method in ("PUT", "POST") else 0))
        headers["Content-Length"] = str(len(body))
        return AWSResponse(request.url, status, headers, _Raw(body))

    def get(self, url: str) -> Optional[bytes]:
        """What a presigned GET of `url` downloads (None: no such object)."""
        parts = urlsplit(url)
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        query = parse_qs(parts.query)
        if query.get("X-Amz-Algorithm") != ["AWS4-HMAC-SHA256"] or "X-Amz-Signature" not in query:
            raise ValueError(f"not a SigV4 presigned url: {url}")
        data = self.objects.get((bucket, key))
        self.downloads.append((key, None if data is None else len(data)))
        return data


class MemoryRedis:
    """The calls ndif's actor path makes on `RedisProvider.sync_client` (see the module docstring)."""

    def __init__(self, limits: str = STOCK_REDIS_LIMITS) -> None:
        self.limits = limits
        self.values: dict = {}
        self.published: list = []   # (channel, message) in order

    def config_get(self, name: str) -> dict:
        return {name: self.limits}

    def publish(self, channel: str, message: Any) -> int:
        self.published.append((channel, message))
        return 1  # one subscriber: the client's /subscribe websocket

    def set(self, key: str, value: Any, ex: Optional[int] = None) -> bool:
        self.values[key] = value
        return True

    def getdel(self, key: Any) -> Any:
        return self.values.pop(key.decode() if isinstance(key, bytes) else key, None)

    def delete(self, key: str) -> int:
        return int(self.values.pop(key, None) is not None)

    def pipeline(self) -> "_Pipeline":
        return _Pipeline(self)


class _Pipeline:
    def __init__(self, redis: MemoryRedis) -> None:
        self.redis, self.calls = redis, []

    def set(self, *args: Any, **kwargs: Any) -> "_Pipeline":
        self.calls.append(("set", args, kwargs))
        return self

    def publish(self, *args: Any) -> "_Pipeline":
        self.calls.append(("publish", args, {}))
        return self

    def execute(self) -> list:
        calls, self.calls = self.calls, []
        return [getattr(self.redis, name)(*args, **kwargs) for name, args, kwargs in calls]
