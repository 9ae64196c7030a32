"""The workers: the Celery app and tasks, the scheduler, the jobs, the live recompute and the glue that hands
graph rows to the model package (`ml`)."""

import warnings

# PyG 2.8 applies torch.jit.script at import time, which torch 2.15 reports as deprecated on every process start:
# a warning about PyG's internals that no user of ours can act on. Silenced by its exact text only.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
