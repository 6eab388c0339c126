"""Imported first in the server and runner processes: `moe_interp` cannot be imported there.

The NDIF server does not have the package; requests must bring what they run (by-value
shipping). The editable install would otherwise make it importable in every process.
"""

import sys


class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "moe_interp" or name.startswith("moe_interp."):
            raise ModuleNotFoundError(f"No module named {name!r} (the NDIF server does not have it)")
        return None


sys.meta_path.insert(0, _Refuse())
