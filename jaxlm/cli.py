"""The ``jaxlm`` command line.

    jaxlm train [CONFIG.yaml] [section.key=value ...]   pretrain (defaults: embedded corpus)
    jaxlm finetune [CONFIG.yaml] [key=value ...]        a backbone + fresh head on labeled data
    jaxlm predict RUN_DIR "text" ... [--file F] [--json] [--step N]   label texts (fine-tuned run)
    jaxlm evaluate RUN_DIR --file FILE [--json] [--step N]   metrics of a fine-tuned run on a file
    jaxlm plan CONFIG [key=value ...] --devices N --device-kind KIND --hbm-gib G   will it fit
    jaxlm generate SOURCE "prompt" ... [--max-new-tokens N] [--temperature T] [--top-k K]
                   [--top-p P] [--seed S] [--stop STR] [--file F] [--json] [--step N]
                   [--dtype auto|float32|bfloat16]
    jaxlm tokenizer train FILE... --vocab-size N --out tokenizer.json
    jaxlm tensorboard RUN_DIR [--port P] [--host 127.0.0.1]   view a run's metrics and traces
    jaxlm export RUN_DIR OUT [--dtype bfloat16] [--step N] [--adapters-only]   params only
    jaxlm convert SRC OUT [--to jaxlm|hf] [--dtype auto|float32|bfloat16] [--overwrite]
                                                        HF dir <-> jaxlm export

Bad input or settings end with one line on stderr naming what was wrong, and exit code 2; a
run that cannot go on (a full disk, a diverged loss, a dead peer) with one line and exit code 1.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2


def _fail(msg: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"jaxlm: error: {msg}", file=sys.stderr)
    if "jaxlm.runtime.distributed" in sys.modules:  # several processes: don't keep the rest waiting
        sys.modules["jaxlm.runtime.distributed"].exit_if_failed(code)
    return code


def _config(args: argparse.Namespace) -> Any:
    from jaxlm.config import load_config

    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path:  # `jaxlm train train.steps=10`: no file given
        path, overrides = None, [path, *overrides]
    return load_config(path, overrides)


def _run(args: argparse.Namespace, loop: Callable[[Any], dict]) -> int:
    result = loop(_config(args))
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from jaxlm.train.pretrain import train

    return _run(args, train)


def cmd_finetune(args: argparse.Namespace) -> int:
    from jaxlm.finetune.main import finetune

    return _run(args, finetune)


def cmd_plan(args: argparse.Namespace) -> int:
    import re

    from jaxlm.errors import UserError

    if args.devices < 1:
        raise UserError(f"--devices {args.devices} must be at least 1")
    if "jax" in sys.modules:  # in-process (tests): the device count is already fixed
        import jax

        if jax.device_count() != args.devices:
            raise UserError(f"--devices {args.devices}: this process already has "
                            f"{jax.device_count()} devices; run `jaxlm plan` in a new process")
    else:  # simulate the devices: fake CPU devices, set before jax is imported
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                       os.environ.get("XLA_FLAGS", ""))
        os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count="
                                   f"{args.devices}").strip()
        os.environ["JAX_PLATFORMS"] = "cpu"
    cfg = _config(args)
    if not 0 < args.mfu <= 1:
        raise UserError(f"--mfu {args.mfu} must be in (0, 1]")
    from jaxlm.plan import finetune_plan, plan

    if _is_finetune(args):
        print(finetune_plan(cfg, args.device_kind))
    else:
        from jaxlm.train.init_from import apply_init_from

        cfg, _ = apply_init_from(cfg)  # model.init_from: plan the source's architecture
        print(plan(cfg, args.device_kind, args.hbm_gib, args.mfu))
    return 0


def _is_finetune(args: argparse.Namespace) -> bool:
    """A fine-tuning config: its YAML has a ``finetune`` section, or finetune.* is set."""
    import yaml

    items = [args.config or "", *args.overrides]
    if any(o.startswith("finetune.") for o in items):
        return True
    path = Path(args.config) if args.config and "=" not in args.config else None
    if path is None or not path.is_file():
        return False
    try:
        return "finetune" in (yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError:
        return False


def cmd_predict(args: argparse.Namespace) -> int:
    import itertools
    import time

    from jaxlm.finetune.predict import load_run, text_batches

    batches = text_batches(args.texts, args.file, args.run_dir, args.jsonl_input,
                           args.batch_size)
    first = next(batches)  # the input is checked before the run is loaded
    predictor = load_run(args.run_dir, step=args.step)
    t0, n = time.perf_counter(), 0
    for batch in itertools.chain([first], batches):  # streamed: one batch held at a time
        given = [text for text in batch if text.strip()]
        rows = iter(predictor.predict(given, batch_size=args.batch_size) if given else [])
        for text in batch:
            if not text.strip():  # an empty input keeps its line, with an empty result
                print(json.dumps({"text": text, "skipped": "empty input"}) if args.json else "",
                      flush=True)
                continue
            row = next(rows)
            print(json.dumps(predictor.record(text, row)) if args.json
                  else predictor.format_row(text, row), flush=True)
            n += 1
    if not args.texts:
        secs = time.perf_counter() - t0
        print(f"predicted {n} texts in {secs:.1f} s ({n / max(secs, 1e-9):.1f} texts/s)",
              file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from jaxlm.finetune.predict import load_run

    predictor = load_run(args.run_dir, step=args.step)
    metrics, report = predictor.evaluate_file(args.file, batch_size=args.batch_size)
    print(json.dumps(metrics) if args.json else report)
    return 0


def read_prompts(prompts: list[str], file: str | None) -> list[str]:
    """Prompts from the command line, else one per non-blank line of ``file`` or stdin."""
    from jaxlm.data.inputs import read_lines

    return prompts or read_lines(file, "prompt")


def cmd_generate(args: argparse.Namespace) -> int:
    from jaxlm.generate import Generator, Sampling

    given = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}
    kw = {k: v for k, v in given.items() if v is not None}  # unset: Sampling's defaults
    if kw.get("top_k") == 0:  # 0 = all
        kw["top_k"] = None
    sampling = Sampling(**kw)  # checks them
    prompts = read_prompts(args.prompts, args.file)
    generator = Generator.load(args.source, step=args.step, dtype=args.dtype)
    kw = {"max_new_tokens": args.max_new_tokens, "sampling": sampling, "seed": args.seed,
          "stop": args.stop or (), "on_capped": _say_capped}
    if len(prompts) == 1 and not args.json:  # one prompt: print tokens as they come
        pieces = generator.stream(prompts[0], **kw)  # checks the prompt first
        print(prompts[0], end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print()
        return 0
    for i, c in enumerate(generator.generate(prompts, batch_size=args.batch_size, **kw)):
        if args.json:
            print(json.dumps({"prompt": c.prompt, "completion": c.text,
                              "tokens": len(c.token_ids), "finish_reason": c.finish_reason}),
                  flush=True)
        else:  # a blank line between results
            print(("\n" if i else "") + c.prompt + c.text, flush=True)
    return 0


def _say_capped(asked: int, cap: int, longest: int) -> None:
    """One line on stderr (stdout keeps the completions) when the context cuts
    ``--max-new-tokens``."""
    print(f"jaxlm: --max-new-tokens {asked} capped to {cap}: the longest prompt is {longest} "
          f"tokens (BOS included) of the model's {longest + cap}-token context "
          "(model.max_seq_len)", file=sys.stderr, flush=True)


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from jaxlm.data.tokenizer import train_tokenizer

    tok = train_tokenizer(args.files, args.vocab_size, args.out, min_frequency=args.min_frequency)
    print(f"wrote {args.out} (vocab {tok.get_vocab_size()})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from jaxlm.checkpoint.export import export, export_adapters

    if args.adapters_only:
        files = export_adapters(args.run_dir, args.out, step=args.step, overwrite=args.overwrite)
        print(f"wrote a Hugging Face PEFT adapter: {' and '.join(files)}")
        return 0
    path = export(args.run_dir, args.out, dtype=args.dtype, step=args.step,
                  overwrite=args.overwrite)
    print(f"wrote {path} ({args.dtype}) and {path.parent / 'config.json'}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from jaxlm.hf.convert import convert

    print(convert(args.src, args.out, to=args.to, dtype=args.dtype, overwrite=args.overwrite))
    return 0


def cmd_tensorboard(args: argparse.Namespace) -> int:
    from jaxlm.metrics import serve_tensorboard

    return serve_tensorboard(args.run_dir, host=args.host, port=args.port)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxlm")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class _ShowDefaults(argparse.HelpFormatter):
    """``--help`` with each option's default, where it has one (not None / off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default not in (None, False, argparse.SUPPRESS) and action.option_strings
                and "%(default)" not in text):
            text += (" " if text else "") + "(default: %(default)s)"
        return text


def _parser_with_defaults(**kwargs: Any) -> argparse.ArgumentParser:
    """A verb's parser whose ``--help`` shows each option's default."""
    return argparse.ArgumentParser(formatter_class=_ShowDefaults, **kwargs)


def _json_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """``--json``, the one machine-readable output flag of every verb (one JSON object per
    line where a verb prints several); ``--jsonl``, its old name, still works."""
    parser.add_argument("--json", action="store_true", help=what)
    parser.add_argument("--jsonl", dest="json", action="store_true", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxlm", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"jaxlm {_version()}")
    # Every verb's --help shows its defaults.
    sub = p.add_subparsers(dest="command", required=True,
                           parser_class=_parser_with_defaults)

    t = sub.add_parser("train", help="pretrain a language model")
    t.add_argument("config", nargs="?", help="YAML config (see configs/); default: built-in")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=200")
    _json_flag(t, "print the final metrics as JSON")
    t.set_defaults(func=cmd_train)

    ft = sub.add_parser("finetune", help="fine-tune a backbone with a fresh task head")
    ft.add_argument("config", nargs="?", help="YAML config (see configs/finetune/)")
    ft.add_argument("overrides", nargs="*", help="dotted overrides, e.g. finetune.epochs=5")
    _json_flag(ft, "print the final metrics as JSON")
    ft.set_defaults(func=cmd_finetune)

    pl = sub.add_parser("plan", help="memory per device and step time of a config, before "
                        "launching it (nothing is allocated)")
    pl.add_argument("config", nargs="?", help="YAML config (see configs/pretrain/)")
    pl.add_argument("overrides", nargs="*", help="dotted overrides, e.g. mesh.fsdp=8")
    pl.add_argument("--devices", type=int, default=1, help="devices to plan for (simulated)")
    pl.add_argument("--device-kind", default="cpu",
                    help="e.g. 'TPU v5e', 'TPU v5p', 'H100', 'A100' (for the peak FLOP/s)")
    pl.add_argument("--hbm-gib", type=float, default=None,
                    help="memory per device; when given, say whether it fits and what would")
    pl.add_argument("--mfu", type=float, default=0.4, help="assumed MFU for the step time")
    pl.set_defaults(func=cmd_plan)

    for name, helptext in (("predict", "label texts (or complete prompts) with a fine-tuned run"),
                           ("evaluate", "metrics of a fine-tuned run on a labeled file")):
        pr = sub.add_parser(name, help=helptext)
        pr.add_argument("run_dir", help="a `jaxlm finetune` run directory")
        if name == "predict":
            pr.add_argument("texts", nargs="*", help="texts to label, or prompts to complete "
                            "(none: --file or stdin)")
            pr.add_argument("--file", help="a text file, one text per line ('-' = stdin); a "
                            ".jsonl file: one JSON object per line, its text column")
            pr.add_argument("--jsonl-input", action="store_true",
                            help="read the input (--file or stdin) as JSON lines: the run's "
                            "text column (prompt column for a generative run) of each")
            _json_flag(pr, "one JSON object per text: label, probability, all scores (a "
                       "generative run: prompt, completion, finish_reason)")
        else:
            # --file, as predict and generate read theirs; --data, its first name, still works
            pr.add_argument("--file", "--data", dest="file", required=True,
                            help="csv/jsonl/parquet with the run's text and label (or prompt and "
                            "completion) columns")
            _json_flag(pr, "print the metrics as JSON")
        pr.add_argument("--step", type=int, default=None,
                        help="checkpoint step (default: the best one)")
        pr.add_argument("--batch-size", type=int, default=64, help="texts run at once")
        pr.set_defaults(func=cmd_predict if name == "predict" else cmd_evaluate)

    g = sub.add_parser("generate", help="continue text with a pretrained decoder (KV cache)")
    g.add_argument("source", help="run directory, checkpoint step directory, export or Hugging "
                   "Face model directory")
    g.add_argument("prompts", nargs="*", help="prompts (none: --file or stdin); one prompt "
                   "streams its tokens as they come")
    g.add_argument("--max-new-tokens", type=int, default=64,
                   help="at most this many new tokens (and never past the model's context)")
    # None: the library's Sampling() defaults (temperature 0.8, top-k 40), the one source
    g.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy (default: 0.8, as jaxlm.generate.Sampling)")
    g.add_argument("--top-k", type=int, default=None,
                   help="sample from the K most likely; 0 = all (default: 40, as Sampling)")
    g.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: the most likely tokens holding P of the probability")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--stop", action="append", help="stop at this text (not printed); repeatable")
    g.add_argument("--file", help="a text file, one prompt per line ('-' = stdin)")
    _json_flag(g, "one JSON object per prompt: prompt, completion, tokens, finish_reason")
    g.add_argument("--step", type=int, default=None,
                   help="checkpoint step of a run directory (default: latest)")
    g.add_argument("--batch-size", type=int, default=32, help="prompts decoded at once")
    g.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default=None,
                   help="compute dtype (default: the model's model.dtype; auto = bf16 where "
                   "the hardware has native bf16); float32 for reference figures")
    g.set_defaults(func=cmd_generate)

    tok = sub.add_parser("tokenizer", help="tokenizer tools")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True,
                                 parser_class=_parser_with_defaults)
    tt = tok_sub.add_parser("train", help="train a byte-level BPE tokenizer on text files")
    tt.add_argument("files", nargs="+", help=".txt / .jsonl (optionally .gz) files")
    tt.add_argument("--vocab-size", type=int, default=4096, help="tokens in the vocabulary")
    tt.add_argument("--min-frequency", type=int, default=2,
                    help="merge only pairs seen at least this often")
    tt.add_argument("--out", required=True, help="output tokenizer.json (or directory)")
    tt.set_defaults(func=cmd_tokenizer_train)

    ex = sub.add_parser("export", help="write a checkpoint's parameters (safetensors) + config")
    ex.add_argument("run_dir", help="run directory, its checkpoints/ or one checkpoint step")
    ex.add_argument("out", help="output directory (model.safetensors, config.json)")
    ex.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="dtype of the written weights")
    ex.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ex.add_argument("--overwrite", action="store_true",
                    help="replace the contents of a non-empty output directory")
    ex.add_argument("--adapters-only", action="store_true",
                    help="a LoRA run: write its adapters as a Hugging Face PEFT adapter "
                    "(adapter_config.json + adapter_model.safetensors) instead of the merged "
                    "model")
    ex.set_defaults(func=cmd_export)

    cv = sub.add_parser("convert", help="Hugging Face model dir <-> jaxlm export (safetensors)")
    cv.add_argument("src", help="an HF model dir (config.json + safetensors), or a jaxlm "
                    "export or run dir")
    cv.add_argument("out", help="output directory")
    cv.add_argument("--to", choices=["jaxlm", "hf"], default=None,
                    help="direction (default: from what SRC is)")
    cv.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="the model's dtype: of the written weights and (to jaxlm) the "
                    "export's compute dtype; auto = float32 weights, bf16 compute where the "
                    "hardware has native bf16")
    cv.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    cv.set_defaults(func=cmd_convert)

    tb = sub.add_parser("tensorboard", help="start TensorBoard on a run directory (or a parent)")
    tb.add_argument("run_dir", help="run directory, e.g. runs/tiny, or runs/ to compare runs")
    tb.add_argument("--port", type=int, default=None, help="default: 6006 or the next free")
    tb.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    tb.set_defaults(func=cmd_tensorboard)
    return p


def _command(argv: list[str]) -> str | None:
    """The subcommand of a ``jaxlm`` command line (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """The ``jaxlm`` command; ``argv`` None reads the command line."""
    if argv is None:  # a process of its own: host memory per command (runtime/hostmem.py)
        from jaxlm.runtime import hostmem

        hostmem.apply(_command(sys.argv[1:]))
    # `datasets` imports torch on first use when it is installed (seconds); jaxlm never needs it.
    os.environ.setdefault("USE_TORCH", "0")
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    from jaxlm.errors import TrainingError, UserError
    from jaxlm.runtime import warn

    warn.install()  # warnings in one line each, once per run (jaxlm/runtime/warn.py)
    try:
        return func(args)
    except UserError as err:
        _new_run_dirs(remove=True)
        return _fail(str(err))
    except TrainingError as err:
        return _fail(str(err), code=1)
    except OSError as err:  # a file jaxlm did not expect to fail on: one line all the same
        from jaxlm.runtime.rundir import NO_SPACE, os_errno, reason

        code = 1 if os_errno(err) in (*NO_SPACE, errno.EIO) else 2
        _new_run_dirs(remove=code == EXIT_BAD_INPUT)
        return _fail(reason(err), code=code)
    except KeyboardInterrupt:
        return _fail("interrupted", code=130)
    finally:
        _new_run_dirs(remove=False)
        warn.uninstall()


def _new_run_dirs(remove: bool) -> None:
    """Forget the run directories this command created; with ``remove`` (it failed on bad
    settings or input), first remove those that hold only start-up files, so a failed start
    leaves no empty run behind (:func:`jaxlm.runtime.rundir.cleanup`)."""
    if "jaxlm.runtime.rundir" in sys.modules:  # else no run directory was prepared
        sys.modules["jaxlm.runtime.rundir"].cleanup(remove)


if __name__ == "__main__":
    sys.exit(main())
