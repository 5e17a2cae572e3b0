"""The `fix` agent loop: the graph, the runner, the patch and tools protocols, the second context."""
