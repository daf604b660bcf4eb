//! Shared transformer blocks over the kernels: linear layers, norms, RoPE, attention, activations.
