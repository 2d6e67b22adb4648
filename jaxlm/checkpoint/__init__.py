"""Everything a run's saved state is: Orbax checkpoints (``checkpointer``: save, resume,
divergence roll-back; ``manager``: the Orbax managers and saved form), whether one fits a run
(``compat``), file checksums (``integrity``), the one read-only reader of a run's checkpoints
(``reader``), parameters-only exports (``export``) and where
starting weights come from (``pretrained``: a run, a step, an export or a Hugging Face
directory)."""
