"""Which folders a file-system source may read: only inside the directories FILESYSTEM_SOURCE_ROOTS names, so that
whoever may manage sources cannot index /etc, another service's data or the application's own secrets."""

import os
from pathlib import Path

from django.conf import settings

from .base import ConfigError


def allowed_roots() -> list[Path]:
    return [Path(root).expanduser().resolve() for root in settings.FILESYSTEM_SOURCE_ROOTS]


def check_root(path: Path) -> Path:
    """The path, resolved (symlinks and .. followed), if it lies inside an allowed root; else ConfigError("path")."""
    resolved = Path(os.path.realpath(path))
    roots = allowed_roots()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        names = ", ".join(str(r) for r in roots) or "none configured"
        raise ConfigError("path", f"must be inside an allowed folder (FILESYSTEM_SOURCE_ROOTS: {names})")
    return resolved


def overlaps(a: str, b: str) -> bool:
    """Whether one folder is the other or inside it (two sources would then index the same files)."""
    first, second = Path(a), Path(b)
    return first == second or first.is_relative_to(second) or second.is_relative_to(first)
