"""Names of strategies and samplers, importable without torch (the CLI's --help stays fast)."""

from typing import Literal

Strategy = Literal["entropy-cut", "uniform-cut", "egps", "argmax-cut", "from-end", "restart"]
STRATEGIES: tuple[str, ...] = Strategy.__args__  # type: ignore[attr-defined]

SamplerName = Literal["plain", "low-temp", "uniform-mh", "ec-mh", "egps", "argmax-cut"]
SAMPLERS: tuple[str, ...] = SamplerName.__args__  # type: ignore[attr-defined]
