"""Where and how a jaxlm process runs, apart from the model: ``jax.distributed`` start-up and
exit (``distributed``, ``coordinator``), per-process logs (``process_log``, ``tee``), one-line
failures (``quiet``), SIGTERM (``preemption``), one writer per run directory (``runlock``,
``rundir``), host memory on CPU-only runs (``hostmem``) and what the machine is, which
decides ``auto`` model settings (``hardware``)."""
