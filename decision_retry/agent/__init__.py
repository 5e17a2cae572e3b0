"""The agent: workspace, test runner and the loop that drives the model."""
