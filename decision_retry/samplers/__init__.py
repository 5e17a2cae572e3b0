"""Power samplers targeting p^alpha: uniform-cut, entropy-cut and multiple-try MH."""

from decision_retry.samplers.cuts import CutRule
from decision_retry.samplers.mh import StepRecord
from decision_retry.samplers.power import SAMPLERS, PowerSampler, SampleResult, SamplerConfig, sample

__all__ = ["CutRule", "PowerSampler", "SAMPLERS", "SampleResult", "SamplerConfig", "StepRecord", "sample"]
