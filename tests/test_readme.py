"""The README's Python example runs as written (keeps the README true)."""

from __future__ import annotations

import re
from pathlib import Path


def test_readme_python_blocks_run(capsys) -> None:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    printed = re.search(r"prints `(chunks .*?)`", text)
    assert printed and printed.group(1) in out
