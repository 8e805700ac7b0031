"""mnistlab: small neural networks on MNIST-style images, and ways to look inside them."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # from_torch imports torch: only when asked for, so `import mnistlab` and the MLP stay torch-free
    if name == "from_torch":
        from .torch_wrap import from_torch

        return from_torch
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")
