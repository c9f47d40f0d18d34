"""Generation behind one protocol: ``Generator.generate(prompts, n, params)``."""

from alignlab.generation.base import Generator, Sample, SamplingParams
from alignlab.generation.hf import HFGenerator

__all__ = ["Generator", "HFGenerator", "Sample", "SamplingParams"]
