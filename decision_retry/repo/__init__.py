"""The user's repository and its tests, knowing nothing of models: the private clone and the one
write back, git with no user config, the sandbox and its limits, and test runs whose verdict needs
positive evidence (docs/design.md §5, docs/safety.md)."""
