"""The workloads: plain programs that train, compress and evaluate models.

Each runs by hand (``python -m engine.workloads.train --help``), as a single
process, under ``horovodrun`` or under ``torchrun``. A workload knows nothing
about the engine: it reads its options, writes into its ``--output`` folder
(model, checkpoints, ``results.json``, TensorBoard events) and appends one
JSON object per line to its metrics file (``$LLMCONSOLE_RUN_DIR/metrics.jsonl``
when that variable is set, else ``<output>/metrics.jsonl``).

Exit codes: 0 done; 2 bad input (a missing or corrupt model folder, an
unusable corpus, a bad option), with one line on stderr naming the problem
and the fix; 3 the run diverged (a NaN or infinite loss), with the reason in
``results.json``; 4 no space left on a disk it writes (metrics, checkpoints,
results), with one line naming the mount, what is free and the fix.
"""
