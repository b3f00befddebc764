"""Interop with other trajectory formats: LeRobot v3 (export and import), Minari and video folders (import).

Every importer has the signature ``f(source, out, overwrite, resolution, image_key) -> Dataset`` and
writes into a hidden staging directory that replaces ``out`` only once the whole import succeeded, so
a failure (an out-of-range action, a bad actions file, a corrupt video) leaves nothing that loads as a
data set. Every exporter has the signature ``g(ds, out, video, overwrite) -> None``.
"""

from simulacra.data.interop.lerobot import export_lerobot, import_lerobot
from simulacra.data.interop.minari import import_minari
from simulacra.data.interop.videos import import_videos

IMPORTERS = {"lerobot": import_lerobot, "minari": import_minari, "videos": import_videos}
EXPORTERS = {"lerobot": export_lerobot}

__all__ = ["EXPORTERS", "IMPORTERS", "export_lerobot", "import_lerobot", "import_minari", "import_videos"]
