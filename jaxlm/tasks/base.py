"""What every objective provides to the generic train / eval steps.

A task owns its model (a backbone with the right head), the inputs that model reads from a
batch, its dummy batch for ``init``, and its loss as *sums*: ``loss_sums`` returns the
objective summed over the batch plus a dict of sums, one of which is ``weight`` (tokens or
examples that count). The train step divides the summed gradient by the total weight once,
so gradient accumulation over microbatches is exact; metrics are ratios of sums, so eval
can add sums over batches (and hosts) before dividing.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

Batch = dict[str, jax.Array]
Sums = dict[str, jax.Array]


class Task:
    """Base class: subclasses set ``model`` and ``model_keys`` and define the loss."""

    model: nn.Module
    model_keys: tuple[str, ...] = ("inputs",)  # batch keys passed to the model, in order
    init_len: int = 8  # sequence length of the dummy batch (parameters do not depend on it)

    def dummy_batch(self) -> dict[str, np.ndarray]:
        """A one-row batch with the right keys and dtypes, for ``init`` and shape inference."""
        raise NotImplementedError

    def init(self, rng: jax.Array) -> Any:
        """The model's boxed (logically partitioned) parameters."""
        batch = self.dummy_batch()
        return self.model.init(rng, *(batch[k] for k in self.model_keys))["params"]

    def apply(self, params: Any, batch: Batch, rng: jax.Array | None = None,
              **kwargs: Any) -> Any:
        """The model's output on ``batch`` (``kwargs`` go to the model); dropout is on when
        ``rng`` is given."""
        return self.model.apply(
            {"params": params}, *(batch[k] for k in self.model_keys), train=rng is not None,
            rngs={"dropout": rng} if rng is not None else {}, **kwargs,
        )

    def loss_sums(self, params: Any, batch: Batch,
                  rng: jax.Array | None = None) -> tuple[jax.Array, Sums]:
        """(summed objective to differentiate, sums including ``weight``)."""
        raise NotImplementedError

    def train_metrics(self, sums: Sums) -> dict[str, jax.Array]:
        """Metrics logged during training, from one step's sums (traced)."""
        raise NotImplementedError

    def eval_metrics(self, sums: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics of a whole evaluation, from sums added over its batches (host)."""
        raise NotImplementedError

    def zero_sums(self) -> Sums:
        """Zeros shaped like ``loss_sums``' sums (the accumulator of grad accumulation)."""
        batch = self.dummy_batch()
        abstract = jax.eval_shape(lambda r: nn.unbox(self.init(r)), jax.random.PRNGKey(0))
        _, sums = jax.eval_shape(self.loss_sums, abstract, batch)
        return jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), sums)


def add_sums(total: dict[str, np.ndarray] | None, sums: Sums) -> dict[str, np.ndarray]:
    """Host-side running total of eval sums (arrays such as confusion matrices included)."""
    sums = {k: np.asarray(v, np.float64) for k, v in jax.device_get(sums).items()}
    if total is None:
        return sums
    return {k: total[k] + sums[k] for k in total}
