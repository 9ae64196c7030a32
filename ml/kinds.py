"""The encoders ``--model`` accepts: the spectral one (the default) first, then the K-layer heterogeneous ones; the
worker trains, rolls out, serves and recomputes every kind (`workers.hetero_live` for the heterogeneous ones).
A module of its own so the command line can name them without importing torch or pydantic."""

MODEL_KINDS = ("spectral-sage", "hetero-sage", "hetero-gcn", "hetero-gin")
