"""Using a generative fine-tuned run: ``jaxlm predict`` (completions) and ``jaxlm evaluate``.

:class:`Completer` loads the run's best checkpoint (or ``--step``'s) as a
:class:`~jaxlm.generate.Generator` and completes prompts in batches, in order, with the run's
``finetune.sampling`` (greedy by default) and ``finetune.max_new_tokens``; on a prompt /
completion file it reports the completion loss and perplexity and the scores of its
generated completions (:mod:`.text_metrics`), as the run's own evaluation does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax

from jaxlm.config import Config
from jaxlm.data.errors import DataError
from jaxlm.data.pipeline import to_global
from jaxlm.finetune.batching import bucket_of, buckets
from jaxlm.finetune.chat import DEFAULT, user_prompt
from jaxlm.finetune.completions import encode_completions, make_rows, pack_rows, specials_text
from jaxlm.finetune.labeled import _local_files, _read_local
from jaxlm.finetune.run import best_step
from jaxlm.finetune.text_metrics import score
from jaxlm.generate import Completion, Generator, Sampling
from jaxlm.sharding import batch_sharding
from jaxlm.tasks import CausalLM
from jaxlm.train.step import make_eval_step
from jaxlm.train.trainer import evaluate


class Completer:
    """A generative fine-tuned run, loaded for inference (see the module docstring)."""

    def __init__(self, run_dir: Path, cfg: Config, step: int | None) -> None:
        self.run_dir, self.cfg = run_dir, cfg
        self.step = step if step is not None else best_step(run_dir, cfg)
        self.generator = Generator.load(run_dir, step=self.step)
        s, f = cfg.finetune.sampling, cfg.finetune
        self.sampling, self.seed = Sampling(s.temperature, s.top_k, s.top_p), s.seed
        self.max_new_tokens = f.max_new_tokens or 64  # (set by every generative run)

    def complete(self, prompts: list[str], batch_size: int = 64) -> list[Completion]:
        """One completion per prompt, in order."""
        return self.generator.generate(prompts, self.max_new_tokens, self.sampling, self.seed,
                                       batch_size=batch_size)

    def predict(self, texts: list[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """One row per prompt: its completion and why it ended (eos, length). A chat run
        (``finetune.data.messages_column``) takes each text as one user turn."""
        f = self.cfg.finetune
        if f.data.messages_column is not None:
            specials = specials_text(self.generator.tokenizer)
            texts = [user_prompt(t, f.chat_template or DEFAULT, specials) for t in texts]
        return [{"completion": c.text, "finish_reason": c.finish_reason}
                for c in self.complete(texts, batch_size)]

    @staticmethod
    def record(text: str, row: dict[str, Any]) -> dict[str, Any]:
        """The ``--json`` line of a prediction."""
        return {"prompt": text, **row}

    @staticmethod
    def format_row(text: str, row: dict[str, Any]) -> str:
        return text + row["completion"]

    def evaluate_file(self, path: str, batch_size: int = 64) -> tuple[dict[str, float], str]:
        """Completion loss, perplexity and generation scores on a prompt/completion file."""
        f, g = self.cfg.finetune, self.generator
        ds = _read_local(_local_files(path), "auto")
        if len(ds) == 0:
            raise DataError(f"{path} holds no examples")
        data = encode_completions(ds, "evaluation", path, g.tokenizer, f.data, f.max_length,
                                  f.prompt_truncation, f.chat_template or DEFAULT)
        task = CausalLM(g.cfg)
        sharding = batch_sharding(g.engine.mesh, g.engine.rules)
        shardings = jax.tree.map(lambda x: x.sharding, g.params)
        step = make_eval_step(task, shardings, sharding, g.engine.mesh, g.engine.rules)
        rows = pack_rows(data.lengths, f.max_length, 0)
        n_dev = g.engine.mesh.size
        size = -(-batch_size // n_dev) * n_dev
        sizes = buckets(f.max_length)

        def batches() -> Any:
            for s in range(0, len(rows), size):
                chunk = (rows[s:s + size] + [[]] * size)[:size]
                need = max(sum(int(data.lengths[i]) for i in r) for r in chunk)
                local = make_rows(data, chunk, bucket_of(max(need, 1), sizes), f.loss_on_prompt)
                yield to_global(local, sharding)

        metrics = task.eval_metrics(evaluate(step, g.params, batches()))
        generated = self.complete(data.model_prompts, batch_size)
        metrics.update(score([c.text.strip() for c in generated],
                             [c.strip() for c in data.completions]))
        metrics["examples"] = len(data)
        text = f"{path} (checkpoint step {self.step}): " + ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if k not in ("examples", "tokens"))
        return metrics, text + f", examples {len(data)}"
