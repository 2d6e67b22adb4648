"""The ``finetune`` section of the config schema: a backbone, a fresh head, labeled data.

Used by ``jaxlm finetune`` (:mod:`jaxlm.finetune`); pretraining ignores it. The mesh,
checkpoint, logging and distributed sections apply as in pretraining; the model
architecture and tokenizer come from the backbone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from jaxlm.config.section import LoraConfig, OptimizerSettings, Section


class LabeledDataConfig(Section):
    """Labeled examples, read with `datasets`.

    ``path``: ``demo`` (the embedded fortunes task), a local directory holding ``train.*``,
    ``validation.*`` (or ``valid``/``dev``) and ``test.*`` files, a local csv/jsonl/parquet
    file or glob (the train split), or a Hugging Face hub dataset name (with ``name``).
    ``validation`` / ``test``: a local file, or a hub split name; unset = found by name, and a
    validation split that does not exist is carved from train (``validation_fraction``,
    seeded by ``finetune.seed``).
    """

    path: str = Field("demo", description="demo (fortunes, classification) | demo:docstrings "
                      "(summaries, generate) | demo:docstring_qa (span) | local dir/file/glob "
                      "| hub dataset name")
    name: str | None = Field(None, description="hub dataset config name")
    train: str = Field("train", description="hub split name of the training data")
    validation: str | None = Field(None, description="local file or hub split; None = find")
    test: str | None = Field(None, description="local file or hub split; None = find")
    format: Literal["auto", "json", "csv", "parquet"] = "auto"
    text_column: str = "text"
    text_pair_column: str | None = Field(None, description="second text (pairs), optional")
    label_column: str = "label"
    prompt_column: str = Field("prompt", description="problem=generate: the prompt text")
    completion_column: str = Field(
        "completion", description="problem=generate: the text the model learns to continue with")
    question_column: str = Field("question", description="problem=span: the question")
    context_column: str = Field("context", description="problem=span: the text to answer from")
    answers_column: str = Field(
        "answers", description="problem=span: SQuAD's {text: [...], answer_start: [...]}, a "
        "list of answer strings, or one string")
    messages_column: str | None = Field(
        None, description="problem=generate: a column of chat conversations (lists of {role, "
        "content}) to learn the last assistant turn of, instead of prompt/completion")
    label_separator: str | None = Field(
        None, description="multi_label: labels given as one string split on this separator"
    )
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)


class SamplingConfig(Section):
    """How ``finetune.problem=generate`` draws the completions it scores: greedy by default;
    otherwise as ``jaxlm generate`` (:class:`jaxlm.generate.Sampling`)."""

    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    top_k: int | None = Field(None, ge=1, description="the K most likely tokens; None = all")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus; None = off")
    seed: int = 0


GENERATION_METRICS = ("exact_match", "f1", "rouge_l", "chrf", "bleu")


class FinetuneConfig(OptimizerSettings):
    """A fine-tuning run: where the backbone comes from, the head, the data, the schedule.

    The one trainer runs it from this section alone (run dir, batch, seed, optimizer): it
    never reads or rewrites ``train.*`` or ``data.*``. Logging and checkpoint cadence are
    ``logging.every`` and ``checkpoint.every``, as in pretraining; AdamW's settings are
    :class:`~jaxlm.config.section.OptimizerSettings` with fine-tuning's defaults.
    """

    backbone: str = Field(
        "runs/default",
        description="a pretraining run dir, a checkpoint step dir, a `jaxlm export` dir, a "
        "Hugging Face model dir (config.json + safetensors), or 'none' (random init of the "
        "config's model.*)",
    )
    from_scratch: bool = Field(
        False, description="take the backbone's architecture and tokenizer, not its weights"
    )
    run_dir: str = "runs/finetune"
    tokenizer: str | None = Field(
        None, description="None = the backbone's (recorded in the run's config.json)"
    )
    problem: Literal["single_label", "multi_label", "regression", "token", "generate",
                     "span"] = Field(
        "single_label", description="generate: prompt -> completion with a decoder's LM head; "
        "span: extractive question answering with an encoder")
    data: LabeledDataConfig = Field(default_factory=LabeledDataConfig)
    num_labels: int | None = Field(None, gt=0, description="None = from the data")
    pooling: Literal["cls", "mean", "last", "attention"] | None = Field(
        None, description="None = cls for encoders, last (non-padding) token for decoders "
        "(it beat mean pooling on the demo: BENCHMARKS.md); attention = a learned weighted "
        "mean of the non-padding tokens"
    )
    pooler: bool = Field(False, description="BERT-style dense + tanh over the pooled token")
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    max_length: int | None = Field(None, gt=2, description="tokens per text; None = model's")
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(32, gt=0, description="examples per step, all devices")
    lr: float = Field(5e-4, gt=0.0, description="peak learning rate of the backbone")
    weight_decay: float = Field(0.01, ge=0.0)
    b2: float = Field(0.999, gt=0.0, lt=1.0, description="AdamW second-moment decay")
    head_lr: float | None = Field(None, gt=0.0, description="of the head; None = lr")
    layer_decay: float = Field(
        1.0, gt=0.0, le=1.0,
        description="layer-wise lr decay: layer i of N gets lr * decay^(N - i), embeddings "
        "decay^(N+1); 1 = off",
    )
    freeze_backbone: bool = Field(False, description="train the head only")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    frozen: list[str] | None = Field(
        None, description="resolved at set-up, recorded in config.json: the parameter subtrees "
        "taken from the backbone and left untrained (LoRA, freeze_backbone), which the run's "
        "checkpoints leave out and readers load from finetune.base")
    base: str | None = Field(
        None, description="resolved at set-up with `frozen`: the backbone checkpoint, export or "
        "Hugging Face directory those subtrees are read from")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    eval_metric: Literal["accuracy", "macro_f1", "loss", "mae", "exact_match", "f1", "rouge_l",
                         "chrf", "bleu"] | None = Field(
        None, description="chooses the best checkpoint (loss, mae: lower is better); None = "
        "macro_f1, mae for regression, loss for generate (which may also use exact_match, f1, "
        "rouge_l, chrf or bleu of its generated completions)"
    )
    eval_samples: int = Field(
        100, ge=0, description="generate: validation examples whose completions are generated "
        "and scored at each epoch's end (0 = loss only); the final test scores every example")
    max_new_tokens: int | None = Field(
        None, gt=0, description="generate: tokens per generated completion; None = the longest "
        "training completion's (EOS included), recorded in the run's config.json")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    chat_template: str | None = Field(
        None, description="generate with data.messages_column: 'default' (jaxlm's <|role|> "
        "turns), a Jinja chat template, or None = the backbone tokenizer's (Hugging Face "
        "tokenizer_config.json) when it has one, else default; recorded in config.json")
    loss_on_prompt: bool = Field(
        False, description="generate: the loss covers the prompt too (default: completion only)")
    prompt_truncation: Literal["left", "refuse"] = Field(
        "left", description="generate: a prompt too long for max_length loses its beginning, "
        "or is an error")
    packing: bool = Field(
        True, description="generate: several examples per row (each its own segment); false "
        "= one example per row, padded")
    doc_stride: int = Field(
        64, ge=0, description="span: tokens shared by consecutive windows of a long context")
    max_answer_length: int = Field(30, gt=0, description="span: tokens in a predicted answer")
    missing_answers: Literal["skip", "refuse"] = Field(
        "skip", description="span: an answer that does not occur in its context is counted "
        "and skipped with a warning, or an error")
    early_stopping: int | None = Field(
        None, gt=0, description="stop after this many epochs without a better eval_metric"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        regression = self.problem == "regression"
        if (self.lora.rank or self.freeze_backbone) and (self.from_scratch
                                                         or self.backbone == "none"):
            what = "finetune.lora.rank" if self.lora.rank else "finetune.freeze_backbone"
            raise ValueError(f"{what} keeps the backbone frozen, but "
                             + ("finetune.from_scratch=true" if self.from_scratch else
                                "finetune.backbone=none") + " gives it random weights; use "
                             "a pretrained backbone, or train every parameter")
        generation = ("loss", *GENERATION_METRICS)
        if self.problem == "generate":
            self.eval_metric = self.eval_metric or "loss"
            if self.eval_metric not in generation:
                raise ValueError(f"finetune.eval_metric={self.eval_metric} does not apply to "
                                 f"finetune.problem=generate; use {', '.join(generation)}")
            if self.eval_metric != "loss" and self.eval_samples == 0:
                raise ValueError(f"finetune.eval_metric={self.eval_metric} scores generated "
                                 "completions, but finetune.eval_samples=0 generates none; "
                                 "set eval_samples > 0 or eval_metric=loss")
            return self
        if self.problem == "span":
            self.eval_metric = self.eval_metric or "f1"
            if self.eval_metric not in ("loss", "exact_match", "f1"):
                raise ValueError(f"finetune.eval_metric={self.eval_metric} does not apply to "
                                 "finetune.problem=span; use f1, exact_match or loss")
            return self
        if self.eval_metric in GENERATION_METRICS:
            raise ValueError(f"finetune.eval_metric={self.eval_metric} scores generated text: it "
                             f"applies to finetune.problem=generate, not {self.problem}")
        if self.eval_metric is None:
            self.eval_metric = "mae" if regression else "macro_f1"
        if regression and self.eval_metric not in ("loss", "mae"):
            raise ValueError(f"finetune.eval_metric={self.eval_metric} does not apply to "
                             "regression; use mae or loss")
        if not regression and self.eval_metric == "mae":
            raise ValueError(f"finetune.eval_metric=mae applies to regression only, not "
                             f"finetune.problem={self.problem}; use accuracy, macro_f1 or loss")
        if self.from_scratch and self.backbone == "none":
            raise ValueError("finetune.from_scratch=true takes the architecture from "
                             "finetune.backbone, which is 'none'")
        return self
