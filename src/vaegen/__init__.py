"""vaegen: train, evaluate, tune and show variational autoencoders for images."""

__version__ = "0.1.0"


def load(path, device="cpu", sampling=None):
    """Load a trained model folder (best_models/<run>); see `vaegen.pipeline.load`."""
    from vaegen.pipeline import load as _load

    return _load(path, device, sampling)


__all__ = ["load", "__version__"]
