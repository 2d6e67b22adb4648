"""Generative fine-tuning (``finetune.problem=generate``): a decoder learns prompt → completion.

The backbone's whole language model (its LM head included) is the starting point, and the
task is pretraining's own :class:`~jaxlm.tasks.CausalLM` — the difference is in the data
(:mod:`.completions`): packed rows in which every example is its own segment and only the
completion's tokens carry loss. Each epoch ends with the validation split's completion loss
and perplexity, and the scores (:mod:`.text_metrics`) of completions generated for the first
``finetune.eval_samples`` validation prompts (greedy unless ``finetune.sampling`` says
otherwise); the final report scores every test example and shows a few completions beside
their references. The run is a language model like a pretraining run: ``jaxlm generate RUN``
and :meth:`jaxlm.generate.Generator.load` take it as they are.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
from tqdm.auto import tqdm

from jaxlm.config import Config, ConfigError
from jaxlm.data.pipeline import to_global
from jaxlm.data.tokenizer import special_ids
from jaxlm.finetune.backbone import BackboneSource, adapter_report, load_base
from jaxlm.finetune.batching import bucket_of, buckets, local_rows
from jaxlm.finetune.chat import template_of
from jaxlm.finetune.completions import (
    Completions,
    encode_completions,
    epoch_order,
    make_rows,
    pack_rows,
    padded_rows,
    padding_waste,
)
from jaxlm.finetune.labeled import load_splits
from jaxlm.finetune.run import build_run, resolve, task_for
from jaxlm.finetune.text_metrics import score
from jaxlm.generate import Completion, Generator, Sampling
from jaxlm.models import param_count
from jaxlm.train.state import TrainState, create_train_state, shapes_of
from jaxlm.train.trainer import Fed, Run, evaluate

EXAMPLES_SHOWN = 3  # greedy completions in the final report


@dataclasses.dataclass
class CompletionData:
    """The encoded splits, each packed into rows (lists of example indices), and the padded
    row lengths used (buckets: packed rows are mostly full, so mostly ``max_length``)."""

    source: BackboneSource
    splits: dict[str, Completions]
    rows: dict[str, list[list[int]]]
    origin: dict[str, str]
    sizes: list[int]


def setup(cfg: Config, devices: list[Any] | None = None) -> tuple[Run, CompletionData]:
    """Build the run and its data; every bad input is one error line."""
    backbone = resolve(cfg)
    f, max_len = cfg.finetune, backbone.max_length
    if not backbone.model.causal:
        raise ConfigError(f"finetune.problem=generate needs a decoder backbone (gpt2, llama); "
                          f"{backbone.source.describe()} is a {backbone.model.family} encoder: "
                          "use a classification problem (or, for extractive QA, span)")
    raw = load_splits(f.data, f.seed)
    template = f.chat_template or template_of(
        backbone.source.path if backbone.source.kind == "hf" else None)
    splits = {name: encode_completions(ds, name, raw.origin[name], backbone.tokenizer, f.data,
                                       max_len, f.prompt_truncation, template)
              for name, ds in (("train", raw.train), ("validation", raw.validation),
                               ("test", raw.test)) if ds is not None}
    rows = {name: (pack_rows(d.lengths, max_len, f.seed) if f.packing else padded_rows(len(d)))
            for name, d in splits.items()}
    total = f.epochs * math.ceil(len(rows["train"]) / f.batch_size)
    train = splits["train"]
    longest = int(max(len(ids) - n for ids, n in zip(train.ids, train.prompt_lens, strict=True)))
    run = build_run(cfg, backbone, task_for(f, backbone.model), total, devices,
                    max_new_tokens=f.max_new_tokens or longest,  # (EOS included)
                    chat_template=template)
    return run, CompletionData(backbone.source, splits, rows, raw.origin, buckets(max_len))


class Generate:
    """The generative objective of :func:`jaxlm.finetune.epochs.run_epochs`."""

    def __init__(self, run: Run, data: CompletionData) -> None:
        self.run, self.data, self.origin = run, data, data.origin
        self.per_epoch = math.ceil(len(data.rows["train"]) / run.settings.batch)
        self._generator: Generator | None = None

    def batch(self, split: str, rows: list[list[int]]) -> dict[str, jax.Array]:
        """The global batch of ``rows`` (all processes' rows; [] = an empty row), padded to
        the bucket of its fullest row; each process builds its own share."""
        data = self.data.splits[split]
        need = max((sum(int(data.lengths[i]) for i in r) for r in rows), default=1)
        length = bucket_of(max(need, 1), self.data.sizes)
        mine = local_rows(rows, jax.process_index(), jax.process_count())
        local = make_rows(data, list(mine), length, self.run.cfg.finetune.loss_on_prompt)
        return to_global(local, self.run.batch_sharding)

    def _batches(self, split: str, order: Any) -> list[list[list[int]]]:
        rows = self.data.rows[split]
        size = self.run.settings.batch
        ordered = [rows[i] for i in order]
        return [(ordered[s:s + size] + [[]] * size)[:size] for s in range(0, len(ordered), size)]

    def plan(self, epoch: int) -> list[list[list[int]]]:
        f = self.run.cfg.finetune
        return self._batches("train", epoch_order(len(self.data.rows["train"]), f.seed, epoch))

    def feed(self, rows: list[list[int]]) -> Fed:
        return Fed(self.batch("train", rows), sum(len(r) for r in rows))

    def initial_state(self) -> TrainState:
        """The backbone's whole language model (LM head included), or a random one."""
        run, f, source = self.run, self.run.cfg.finetune, self.data.source
        if source.kind == "none" or f.from_scratch:
            why = "finetune.from_scratch" if f.from_scratch else "finetune.backbone=none"
            run.log(f"language model: random initialisation ({why}), architecture of "
                    f"{source.describe()}")
            return create_train_state(run.task, run.tx, run.mesh, run.rules, f.seed,
                                      trainable=run.trainable)[0]
        params = load_base(source, shapes_of(run.state.params), run.shardings.params)
        run.log(f"loaded  language model: {param_count(run.cfg.model) / 1e6:.2f}M params "
                f"(LM head included) from {source.describe()}")
        adapters = adapter_report(params, f.lora)
        if adapters:
            run.log(adapters)
        return create_train_state(run.task, run.tx, run.mesh, run.rules, f.seed,
                                  trainable=run.trainable, given=params)[0]

    def prepare(self) -> None:
        pass

    def describe(self) -> str:
        run, data, f = self.run, self.data, self.run.cfg.finetune
        sizes = " / ".join(f"{len(d)} {name}" for name, d in data.splits.items())
        train = data.splits["train"]
        rows = data.rows["train"]
        waste = padding_waste(train, rows, f.max_length)
        truncated = sum(d.truncated for d in data.splits.values())
        return (f"jaxlm finetune: generate (prompt -> completion, loss on "
                f"{'prompt and completion' if f.loss_on_prompt else 'completion only'}); "
                f"{run.cfg.model.family} language model {param_count(run.cfg.model) / 1e6:.2f}M "
                f"params; {sizes} examples; train {'packed' if f.packing else 'one per row'} "
                f"into {len(rows)} rows of {f.max_length} tokens ({waste:.1%} padding)"
                + (f"; {truncated} prompt(s) cut from the left to fit" if truncated else "")
                + f"; {f.epochs} epochs of {self.per_epoch} steps of {f.batch_size} rows; "
                f"mesh {dict(run.mesh.shape)}")

    def evaluate(self, params: Any, split: str) -> tuple[dict[str, float], Any]:
        """Completion loss and perplexity of ``params`` on ``split``, and the scores of the
        completions generated for its first ``eval_samples`` prompts (every prompt of the
        test split); the completions come back with the sums (for the report)."""
        order = range(len(self.data.rows[split]))
        plan = self._batches(split, order)
        batches = (self.batch(split, rows) for rows in plan)
        sums = evaluate(self.run.eval_step, params, batches, self.run.bar(f"eval {split}"),
                        len(plan))
        metrics = self.run.task.eval_metrics(sums)
        f, data = self.run.cfg.finetune, self.data.splits[split]
        n = len(data) if split == "test" else min(f.eval_samples, len(data))
        generated: list[Completion] = []
        if n:
            generated = self.complete(params, data.model_prompts[:n], split)
            metrics.update(score([c.text.strip() for c in generated],
                                 [data.completions[i].strip() for i in range(n)]))
        return metrics, {**sums, "generated": generated}

    def complete(self, params: Any, prompts: list[str], split: str) -> list[Completion]:
        """Completions of ``prompts`` by ``params`` (the run's mesh; a progress bar)."""
        run, s = self.run, self.run.cfg.finetune.sampling
        if self._generator is None:
            ids = special_ids(run.tokenizer)
            self._generator = Generator(run.cfg.model, params, run.tokenizer, run.mesh,
                                        run.rules, ids.bos if ids.bos is not None else ids.eos,
                                        ids.eos)
        self._generator.params = params
        sampling = Sampling(s.temperature, s.top_k, s.top_p)
        size = max(run.settings.batch, 8)
        out: list[Completion] = []
        bar = tqdm(total=len(prompts), desc=f"generate {split}", unit="completion", leave=False,
                   dynamic_ncols=True, disable=not (run.primary and run.cfg.logging.progress))
        for start in range(0, len(prompts), size):
            chunk = prompts[start:start + size]
            out += self._generator.generate(chunk, run.cfg.finetune.max_new_tokens, sampling,
                                            s.seed, batch_size=size)
            bar.update(len(chunk))
        bar.close()
        return out

    def report(self, params: Any, split: str, sums: Any) -> tuple[list[str], dict[str, Any]]:
        """A few generated completions beside their references; all of them in the result."""
        data, generated = self.data.splits[split], sums["generated"]
        lines = [f"examples ({split}): prompt | generated | reference"]
        for i, c in enumerate(generated[:EXAMPLES_SHOWN]):
            lines.append(f"  {_short(data.prompts[i])!r} | {_short(c.text)!r} | "
                         f"{_short(data.completions[i])!r}")
        rows = [{"prompt": data.prompts[i], "completion": c.text, "reference":
                 data.completions[i], "finish_reason": c.finish_reason}
                for i, c in enumerate(generated)]
        return lines, {"predictions": rows}


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
