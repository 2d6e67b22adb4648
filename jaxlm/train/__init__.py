"""Training: optimizers (``optim``), the sharded train state (``state``), the jitted steps for
any task (``step``), ``model.init_from`` (``init_from``) and the loop (``loop``)."""
