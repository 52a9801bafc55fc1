"""What the sandbox's modules share: the checkout the simulated processes import from, the
launcher script they are started with, and the one-line error an operator can act on."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


LAUNCHER = '''"""stock-bot stand-in written by `trading-readiness sandbox`: runs {module}."""
import sys

sys.path.insert(0, {repo!r})
from {module} import main  # noqa: E402

raise SystemExit(main())
'''


class SandboxError(Exception):
    """Something the operator must fix (port in use, sandbox already running, ...): one line."""
