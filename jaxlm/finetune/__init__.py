"""Fine-tuning a backbone with a fresh head: the backbone (``backbone``), labeled data
(``labeled``, ``batching``), the run (``run``, ``loop``) and using it (``predict``)."""
