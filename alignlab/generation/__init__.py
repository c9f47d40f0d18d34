"""Generation behind one protocol: get a ``Generator`` from ``make_generator`` and call
``generate(prompts, n, params)``."""

from alignlab.generation.base import Generator, Sample, SamplingParams
from alignlab.generation.factory import BACKENDS, make_generator
from alignlab.generation.hf import HFGenerator

__all__ = ["BACKENDS", "Generator", "HFGenerator", "Sample", "SamplingParams", "make_generator"]
