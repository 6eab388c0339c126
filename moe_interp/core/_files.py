"""Files that are whole or absent: atomic writes and sha256 checksums, for every result the
package saves (`RoutingCounts.save`, `ExpertAttribution.save`, resume checkpoints).

A file is written to a temporary file beside it, flushed to disk, then renamed over the old
one (`os.replace`), and the directory entry is flushed too: a write killed at any moment
leaves the old file or the new one, never a torn one. A directory of such files that does not
exist yet is written as a hidden sibling and renamed into place, so it appears whole.
A result is saved as such a directory (`save_tensor_directory`): a safetensors file that holds
the tensors, the JSON header and the sha256 `checksum` of both (the copy of record), beside a
readable JSON copy of the header; `read_checked` reads the tensor file back and refuses it
when a byte changed after it was written.

```python
>>> import tempfile
>>> from pathlib import Path
>>> from moe_interp.core._files import replace_file, write_directory
>>> folder = Path(tempfile.mkdtemp())
>>> replace_file(folder / "a.txt", lambda temp: temp.write_text("one"))
>>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())  # no temporary file left
('one', ['a.txt'])
>>> out = write_directory(folder / "run", {"x.txt": lambda temp: temp.write_text("x")})
>>> sorted(p.name for p in out.iterdir())
['x.txt']

```

Imports nothing from the package: every layer may use it.
"""

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

__all__ = ["checksum", "read_checked", "read_tensors", "replace_file", "save_tensor_directory", "sync_directory", "verify_checksum", "write_directory"]


def _temporary(path: Path) -> Path:
    """A hidden, unique name beside `path`."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def replace_file(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(temp)` a temporary file beside `path`, flush it to disk, then rename it over `path`.

    ```python
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "b.txt"
    >>> replace_file(path, lambda temp: temp.write_text("two"))
    >>> path.read_text()
    'two'

    ```
    """
    temp = _temporary(path)
    try:
        write(temp)
        # a writer may create the file as private (0600, like a temporary file): the result gets
        # the mode of the file it replaces, or what the user's umask gives a new file
        os.chmod(temp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    sync_directory(path.parent)


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), else by
    setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename is durable only then); not possible on Windows.

    ```python
    >>> import tempfile
    >>> from pathlib import Path
    >>> sync_directory(Path(tempfile.mkdtemp()))

    ```
    """
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_directory(path: Path, files: Mapping[str, Callable[[Path], Any]]) -> Path:
    """Write the files of directory `path` (file name -> `write(temp)`, in order), each with
    `replace_file`; returns `path`. An existing directory has its files replaced one by one;
    a new one is written as a hidden sibling renamed into place, so it appears whole.
    Whether `path` may be replaced is the caller's check.

    ```python
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = write_directory(Path(tempfile.mkdtemp()) / "new" / "run", {"y.txt": lambda temp: temp.write_text("y")})
    >>> (out / "y.txt").read_text(), sorted(p.name for p in out.parent.iterdir())
    ('y', ['run'])

    ```
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path if path.exists() else _temporary(path)
    target.mkdir(exist_ok=True)
    try:
        for name, write in files.items():
            replace_file(target / name, write)
        if target != path:
            os.replace(target, path)
            sync_directory(path.parent)
    finally:
        if target != path and target.exists():
            shutil.rmtree(target)
    return path


def checksum(header: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a file's header text and every tensor's name, dtype, shape and bytes.

    ```python
    >>> import torch
    >>> a = checksum("{}", {"x": torch.zeros(2)})
    >>> len(a), a == checksum("{}", {"x": torch.zeros(2)}), a == checksum("{}", {"x": torch.zeros(1, 2)})
    (64, True, False)

    ```
    """
    digest = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def read_tensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """`(metadata, tensors)` of the safetensors file `path`; a damaged file raises what
    `safetensors` raises (`SafetensorError`, `OSError`, ...), for the caller to name.

    ```python
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from safetensors.torch import save_file
    >>> path = Path(tempfile.mkdtemp()) / "t.safetensors"
    >>> save_file({"x": torch.ones(2)}, str(path), metadata={"note": "hi"})
    >>> read_tensors(path)
    ({'note': 'hi'}, {'x': tensor([1., 1.])})

    ```
    """
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}, {name: handle.get_tensor(name) for name in handle.keys()}


def save_tensor_directory(path: Path, header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], *,
                          tensor_file: str, what: str, overwrite: bool = False, meta_file: str = "meta.json") -> Path:
    """Save a result as directory `path` with `write_directory`: `tensor_file` (safetensors:
    the tensors, with the JSON `header` and the sha256 `checksum` of both in its metadata, the
    copy of record that `read_checked` verifies) and `meta_file` (the header and checksum as
    readable JSON, for people and other tools). An existing `path` is replaced only with
    `overwrite=True`, and only if it is an empty directory or one such a save wrote; `what`
    names that save in the error (e.g. `"RoutingStats.save"`). Returns `path`.

    ```python
    >>> import json, tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "demo.result"
    >>> save_tensor_directory(path, {"format": "demo/1"}, {"x": torch.ones(2)}, tensor_file="x.safetensors",
    ...                       what="Demo.save").name
    'demo.result'
    >>> sorted(p.name for p in path.iterdir()), sorted(json.loads((path / "meta.json").read_text()))
    (['meta.json', 'x.safetensors'], ['format', 'sha256'])
    >>> save_tensor_directory(path, {}, {}, tensor_file="x.safetensors", what="Demo.save")
    Traceback (most recent call last):
    FileExistsError: ... exists; pass overwrite=True to replace it

    ```
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        if not path.is_dir() or (any(path.iterdir()) and not (path / tensor_file).exists()
                                 and not (path / meta_file).exists()):
            raise FileExistsError(f"{path} exists and is not a directory written by {what}; overwrite=True replaces "
                                  "only those: choose another path")
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    body = json.dumps(header, default=str)
    digest = checksum(body, tensors)
    readable = json.dumps({**json.loads(body), "sha256": digest}, indent=1)
    return write_directory(path, {
        tensor_file: lambda temp: save_file(tensors, str(temp), metadata={"moe_interp": body, "sha256": digest}),
        meta_file: lambda temp: temp.write_text(readable)})


def read_checked(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """`read_tensors(path)`, after checking the sha256 checksum `save_tensor_directory` stores
    (metadata `"sha256"` of the header `"moe_interp"` and the tensors): a byte changed after
    the save raises `ValueError` naming the file, never gives other numbers. A file without a
    header there (written before files carried a checksum) is returned unverified: the caller
    decides. A damaged file raises what `read_tensors` raises.

    ```python
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = save_tensor_directory(Path(tempfile.mkdtemp()) / "run", {"format": "demo/1"}, {"x": torch.ones(2)},
    ...                              tensor_file="x.safetensors", what="Demo.save")
    >>> metadata, tensors = read_checked(path / "x.safetensors")
    >>> metadata["moe_interp"], tensors
    ('{"format": "demo/1"}', {'x': tensor([1., 1.])})
    >>> data = bytearray((path / "x.safetensors").read_bytes())
    >>> data[-1] ^= 1                                # one bit of the last number
    >>> _ = (path / "x.safetensors").write_bytes(bytes(data))
    >>> read_checked(path / "x.safetensors")
    Traceback (most recent call last):
    ValueError: .../x.safetensors fails its sha256 checksum: it was changed or damaged after it was written

    ```
    """
    stored, tensors = read_tensors(path)
    if "moe_interp" in stored:
        verify_checksum(path, stored, tensors)
    return stored, tensors


def verify_checksum(path: Any, stored: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise `ValueError` naming `path` unless the sha256 `stored` with a header (metadata
    `"moe_interp"` and `"sha256"`, as `save_tensor_directory` writes them) is that of the
    header and `tensors` read back.

    ```python
    >>> import torch
    >>> body = '{"format": "demo/1"}'
    >>> verify_checksum("x.safetensors", {"moe_interp": body, "sha256": checksum(body, {})}, {})
    >>> verify_checksum("x.safetensors", {"moe_interp": body, "sha256": "0" * 64}, {})
    Traceback (most recent call last):
    ValueError: x.safetensors fails its sha256 checksum: it was changed or damaged after it was written

    ```
    """
    if checksum(stored["moe_interp"], tensors) != stored.get("sha256"):
        raise ValueError(f"{path} fails its sha256 checksum: it was changed or damaged after it was written")
