"""Files that are whole or absent: atomic writes and sha256 checksums, for every result the
package saves (`RoutingCounts.save`, `ExpertAttribution.save`, resume checkpoints).

A file is written to a temporary file beside it, flushed to disk, then renamed over the old
one (`os.replace`), and the directory entry is flushed too: a write killed at any moment
leaves the old file or the new one, never a torn one. A directory of such files that does not
exist yet is written as a hidden sibling and renamed into place, so it appears whole.
The same module reads such a directory's tensor file back (`read_tensors`) and computes the
sha256 checksum `RoutingCounts` files carry (`checksum`).

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
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

__all__ = ["checksum", "read_tensors", "replace_file", "sync_directory", "write_directory"]


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
