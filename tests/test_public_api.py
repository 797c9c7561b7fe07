"""The public API: every exported name resolves, and importing the package stays light (no torch)."""

from __future__ import annotations

import subprocess
import sys

import mllm_protector


def test_every_public_name_resolves() -> None:
    for name in mllm_protector.__all__:
        assert getattr(mllm_protector, name).__name__ == name


def test_import_does_not_load_torch() -> None:
    code = "import sys, mllm_protector; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
