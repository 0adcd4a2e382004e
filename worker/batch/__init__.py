"""The batch worker (`apiinone batch-worker`): validates, runs and finalizes OpenAI batches.

Life of a batch (OpenAI's statuses)::

    validating --> in_progress --> finalizing --> completed
         |              |  \\--> (window over) --> expired
         v              v
       failed       cancelling --> cancelled

The rooms of this package:

- ``process.py``   the process: which batches run here (leases), its loops, ``serve``
- ``leases.py``    the batch lease: one batch worker runs a batch; a killed one's batches move on
- ``validation.py`` the input file's lines checked (pure: lines in, line errors and a total out)
- ``run.py``       a batch's execution: feed lines, run each line's attempts, exactly once
- ``admit.py``     a line's admission and submission: the shared lifecycle (``shared/dispatch.py``),
                   the key's current record and limits, waiting out rate limits and full queues
- ``lines.py``     one line's state while it runs, how an attempt ended, its output line
- ``probe.py``     where an attempt is, from Redis, when its replies are silent or lost
- ``spool.py``     output and error lines moved from Redis to the blob store a part at a time, once
- ``finalize.py``  unrun lines on expiry, the output and error files, the terminal status
- ``callbacks.py`` the signed completion callback: scheduling, rate, attempts
- ``egress.py``    the callback's one POST: public https addresses only, a coarse outcome

Storage: batches' hot state and the per-line scripts are ``shared/batch_store.py``; files (bytes in the
blob store, metadata in Postgres) are ``shared/file_store.py``.
"""

from worker.batch.process import serve

__all__ = ["serve"]
