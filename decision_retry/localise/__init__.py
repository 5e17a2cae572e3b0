"""Fault localisation: which functions the failing test may blame (`locate.localise`, the ranking
`fix` shows the model), from a coverage spectrum, the traceback and the failing test's calls."""
