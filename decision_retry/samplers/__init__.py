"""Power samplers targeting p^alpha: uniform-cut, entropy-cut and multiple-try MH."""

from decision_retry.samplers.cuts import CutRule
from decision_retry.samplers.mh import StepRecord
from decision_retry.samplers.power import (
    SAMPLERS,
    PowerSampler,
    SamplerConfig,
    SampleResult,
    sample,
)

__all__ = ["SAMPLERS", "CutRule", "PowerSampler", "SampleResult", "SamplerConfig", "StepRecord",
           "sample"]
