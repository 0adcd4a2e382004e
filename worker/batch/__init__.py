"""The batch worker (`apiinone batch-worker`); see run.py."""

from worker.batch.run import serve

__all__ = ["serve"]
