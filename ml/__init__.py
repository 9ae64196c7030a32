"""The model package: encoders, the served forward pass, training, checkpoints and evaluation metrics.

It receives tensors and arrays (`ml.interaction_graph.InteractionGraph`, graph rows turned into arrays by
`workers`) and never talks to Neo4j, Redis, Celery or gRPC: `tests/test_rooms.py` checks its imports.
"""

import warnings

# PyG 2.8 applies torch.jit.script at import time, which torch 2.15 reports as deprecated on every process start:
# a warning about PyG's internals that no user of ours can act on. Silenced by its exact text only.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
