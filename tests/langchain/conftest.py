"""The LangChain tests need the extra: pip install 'decision-retry[langchain]' (make install has it)."""

import importlib.util

# without langchain these modules cannot even be imported: do not collect them
collect_ignore_glob = [] if importlib.util.find_spec("langchain") else ["test_*.py", "lc_*.py"]
