"""charrnn: character-level recurrent language models with three interchangeable engines."""

__version__ = "0.1.0"


def load(run_dir, impl: str = "library", which: str = "latest", device: str = "cpu", quantize=None):
    """Load a trained run for sampling and evaluation; see charrnn.api.load and TrainedModel."""
    from .api import load as _load

    return _load(run_dir, impl=impl, which=which, device=device, quantize=quantize)
