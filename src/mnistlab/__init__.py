"""mnistlab: small neural networks on MNIST-style images, and ways to look inside them."""

__version__ = "0.1.0"
