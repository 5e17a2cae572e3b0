"""The LangChain tests need the extra: pip install 'decision-retry[langchain]' (make install has it)."""

import pytest

pytest.importorskip("langchain.agents", reason="needs the langchain extra")
