"""Moved to `decision_retry.samplers.chain` (the one MH chain); kept importable for old callers."""

from decision_retry.samplers.chain import (  # noqa: F401
    CUT_STRATEGIES,
    SINGLE_TRY_CUTS,
    STRATEGIES,
    Chain,
    CutPoint,
    Decision,
    RetryConfig,
    Strategy,
    Trajectory,
    accept,
    choose_cut,
    cut_entropies,
    cut_scale,
    flatten,
    movable,
    multiple_try,
    verdict,
)
