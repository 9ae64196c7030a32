"""The encoders ``--model`` accepts: the served one first, then the K-layer heterogeneous ones (offline only).
A module of its own so the command line can name them without importing torch or pydantic."""

MODEL_KINDS = ("spectral-sage", "hetero-sage", "hetero-gcn", "hetero-gin")
