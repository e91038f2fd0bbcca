"""mgd: metagradient descent in JAX.

Exact reverse-mode metagradients through whole training runs (the replay engine), a smooth
training wrapper that turns a training recipe into a differentiable function of its
metaparameters, and outer optimizers built on them (dataset selection, learning-rate schedule
search, data poisoning).
"""


__version__ = "0.1.0"
