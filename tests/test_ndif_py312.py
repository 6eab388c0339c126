"""NDIF's server code on the Python it requires (ndif 0.1.2: >= 3.12), with its declared dependencies.

The client stays on this checkout's Python (3.11 in CI); the harness server
(`ndif_harness/server.py`) and its sandbox runners run in a Python 3.12 virtual environment
where `pip install "ndif[ray]==0.1.2"` installed ndif and everything it declares (the `ray`
extra is what its model actor imports), with nnsight, transformers and torch pinned to the
client's versions, and without moe_interp. `scripts/ndif_server_py312.sh` builds that
environment (`NDIF_PY312_VENV`, default `.ndif/py312`) and runs this file.

The tests of `test_ndif_server.py` run here again against that server: every remote path on
four models in both server paths (in-process and sandboxed), the session-split profile, the
refusal of `import moe_interp`, and the object-store route, which on 3.12 needs no extra
install (ndif's model actor imports as declared). Each result is compared bitwise with the
same call run locally on the client.
"""

import os
import subprocess

import pytest

from ndif_harness import NdifServer
from test_ndif_server import (  # noqa: F401  (collected here again, against the 3.12 server)
    test_a_result_over_8_mib_comes_back_through_the_object_store_bitwise_local,
    test_profile_in_session_requests_of_two_batches_is_bitwise_local,
    test_remote_path_on_ndif_server_code_is_bitwise_local,
    test_routing_result_and_round_trips_do_not_grow_with_tokens,
    test_the_server_cannot_import_moe_interp,
    wire,
)
from test_remote import ship_functions_unwrapped  # noqa: F401  (autouse: ship functions as installed code)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.environ.get("NDIF_PY312_VENV", os.path.join(ROOT, ".ndif", "py312"))
PYTHON = os.path.join(os.path.abspath(VENV), "bin", "python")

pytestmark = pytest.mark.skipif(
    not os.path.exists(PYTHON), reason=f"no Python 3.12 environment with ndif at {VENV}: "
    "scripts/ndif_server_py312.sh builds it (~5.3 GB, ~4 min from PyPI: torch's CUDA build is the only one for 3.12 "
    "there) and runs these tests")


@pytest.fixture(scope="module")
def server():
    """The harness server on the venv's Python, ndif imported from its site-packages."""
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES
    import nnsight.ndif

    by_value, pulled = set(_PICKLE_BY_VALUE_MODULES), nnsight.ndif._PULLED_ENV
    process = NdifServer("", python=PYTHON)
    yield process
    process.close()
    _PICKLE_BY_VALUE_MODULES.clear()
    _PICKLE_BY_VALUE_MODULES.update(by_value)
    nnsight.ndif._PULLED_ENV = pulled


@pytest.fixture(scope="module")
def actor_server(server):
    return server


_DECLARED = """
from importlib.metadata import requires, version
from packaging.requirements import Requirement
print(version("ndif"))
for line in requires("ndif"):
    r = Requirement(line)
    if r.marker is None or r.marker.evaluate({"extra": "ray"}):  # the base and the model actor's extra
        print(r.name, version(r.name), r.specifier.contains(version(r.name), prereleases=True))
"""


def test_the_server_runs_python_3_12_with_ndifs_declared_dependencies(server):
    probe = server.probe()
    assert tuple(map(int, probe["python"].split(".")[:2])) >= (3, 12), probe
    assert probe["actor"] == "", probe["actor"]  # ndif's model actor imports: ray, accelerate, boto3, redis
    check = subprocess.run([PYTHON, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    lines = subprocess.run([PYTHON, "-c", _DECLARED], capture_output=True, text=True, check=True).stdout.split("\n")
    assert lines[0] == "0.1.2"
    installed = {name.lower(): (got, ok == "True") for name, got, ok in (line.split() for line in lines[1:] if line)}
    assert all(ok for _, ok in installed.values()), installed
    assert {"nnsight", "pydantic", "redis", "boto3", "ray", "transformers", "accelerate", "zstandard"} <= set(installed)
