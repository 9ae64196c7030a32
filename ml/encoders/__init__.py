"""The encoders (PyG style): the served spectral one, the K-layer heterogeneous ones, the ego-graph GIN."""
