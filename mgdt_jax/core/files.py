"""Files that appear whole or not at all: written under a temporary name beside their target, then
renamed (a rename within a directory is atomic on POSIX filesystems), so an interrupted write
never leaves a half file under the real name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through ``path.partial``; OSError as ``Path.write_text``.
    ``path`` is a ``pathlib.Path`` or anything with its API, e.g. an ``etils.epath.Path``."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def write_json(path: Path, content: Any) -> None:
    """``content`` as indented JSON, written as ``write_text`` does."""
    write_text(path, json.dumps(content, indent=1) + "\n")
