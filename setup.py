"""The one build-time field pyproject.toml cannot hold: where the ``sandbox`` extra comes from.

The sandbox is its own distribution (``sandbox/``, trading-readiness-sandbox) and is not on
PyPI, so a version pin cannot resolve. Built from a checkout, the extra points at the
checkout's ``sandbox/`` directory (a PEP 508 direct reference), and
``pip install '.[sandbox]'`` installs both; the exporter's wheel itself never contains the
sandbox module. Built from an sdist (no ``sandbox/`` beside it), the extra names the version.
"""

from pathlib import Path

from setuptools import setup

SANDBOX = Path(__file__).resolve().parent / "sandbox"


def sandbox_requirement() -> str:
    if (SANDBOX / "pyproject.toml").is_file():
        return f"trading-readiness-sandbox @ {SANDBOX.as_uri()}"
    return "trading-readiness-sandbox==0.1.0"


setup(extras_require={
    "test": [
        # pytest 9.2 keeps node ids in a structure pytest-xdist 3.8 does not write to: `--dist
        # loadgroup` then ignores xdist_group and two whole stacks run at once on two cores
        # (pytest-dev/pytest-xdist#1386)
        "pytest>=8,<9.2",
        "pytest-xdist>=3.5,<4",  # the suite mostly waits on real servers: two workers halve its wall time
        "hypothesis>=6.100,<7",
        "ruff>=0.5,<1",
        "mypy>=1.10,<2",
        "types-PyYAML>=6,<7",
        "types-requests>=2.31,<3",
        "websockets>=13,<18",  # the status-page test drives Chromium over its DevTools websocket
        "import-linter>=2.1,<3",  # `make test` checks the layers (the contracts in pyproject.toml)
        "setuptools>=77",  # the packaging test builds the wheel without build isolation (no download)
    ],
    # The sandbox (loopback fakes, the simulated bot, the demo): its own distribution in sandbox/.
    "sandbox": [sandbox_requirement()],
})
