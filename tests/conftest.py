"""Shared pytest setup."""

import sys
from pathlib import Path

# tools/ holds the test-model builder (model_builder.py); make it importable from tests.
_TOOLS = str(Path(__file__).resolve().parents[1] / "tools")
if _TOOLS not in sys.path:
    sys.path.insert(0, _TOOLS)
