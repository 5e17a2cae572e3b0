"""The agent definitions as package data: one TOML file per protocol (`patch.toml`, `tools.toml`)
holding its prompt templates, action format and limits. Read by `agent/definitions.py`
through importlib.resources, so a checkout, an editable install and a wheel read the same files."""
