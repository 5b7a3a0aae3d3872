"""Shared pytest set-up: put the repo root on ``sys.path``.

pytest (rootdir-relative, no ``tests/__init__.py``) only adds ``tests/`` itself, so ``addon``
and ``tests.fakes`` / ``tests.e2e`` would not import without this. The ``e2e`` and
``codex_cli`` markers are registered in pyproject.toml.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
