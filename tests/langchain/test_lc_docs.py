"""docs/langchain.md runs as written: every ```python block in a fresh interpreter, its output
compared with the ```text block that follows it; the agent example is examples/langchain_agent.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "langchain.md"
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    """(code, expected output or "") of each runnable python block, in order."""
    found = [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(DOC.read_text())]
    out = []
    for i, (lang, info, body) in enumerate(found):
        if lang != "python" or info == "no-run":
            continue
        nxt = found[i + 1] if i + 1 < len(found) else None
        out.append((body, nxt[2] if nxt and nxt[0] == "text" else ""))
    return out


def test_the_docs_have_the_examples():
    codes = [code for code, _ in blocks()]
    assert len(codes) == 2
    assert any("DecisionRetryMiddleware(" in c for c in codes)
    assert any("ChatDecisionRetry(" in c and "stream(" in c for c in codes)
    example = (ROOT / "examples" / "langchain_agent.py").read_text()
    assert example.rstrip("\n") + "\n" in codes  # the docs and examples/: one program


@pytest.mark.parametrize("index", range(2))
@pytest.mark.slow
def test_each_python_block_prints_what_the_docs_say(index, tmp_path):
    code, expected = blocks()[index]
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expected, "every example is followed by what it prints"
    assert proc.stdout == expected
