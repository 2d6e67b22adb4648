"""The ``jaxlm`` command line.

    jaxlm train [CONFIG.yaml] [section.key=value ...]   pretrain (defaults: embedded corpus)
    jaxlm tokenizer train FILE... --vocab-size N --out tokenizer.json

Bad input ends with one line on stderr naming what was wrong, and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

EXIT_BAD_INPUT = 2


def _fail(msg: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"jaxlm: error: {msg}", file=sys.stderr)
    return code


def cmd_train(args: argparse.Namespace) -> int:
    from jaxlm.config import load_config

    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path:  # `jaxlm train train.steps=10`: no file given
        path, overrides = None, [path, *overrides]
    cfg = load_config(path, overrides)

    from jaxlm.train.loop import train

    result = train(cfg)
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from jaxlm.data.tokenizer import train_tokenizer

    tok = train_tokenizer(args.files, args.vocab_size, args.out, min_frequency=args.min_frequency)
    print(f"wrote {args.out} (vocab {tok.get_vocab_size()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxlm", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="pretrain a language model")
    t.add_argument("config", nargs="?", help="YAML config (see configs/); default: built-in")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=200")
    t.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    t.set_defaults(func=cmd_train)

    tok = sub.add_parser("tokenizer", help="tokenizer tools")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True)
    tt = tok_sub.add_parser("train", help="train a byte-level BPE tokenizer on text files")
    tt.add_argument("files", nargs="+", help=".txt / .jsonl (optionally .gz) files")
    tt.add_argument("--vocab-size", type=int, default=4096)
    tt.add_argument("--min-frequency", type=int, default=2)
    tt.add_argument("--out", required=True, help="output tokenizer.json (or directory)")
    tt.set_defaults(func=cmd_tokenizer_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    from jaxlm.errors import TrainingError, UserError

    try:
        return func(args)
    except UserError as err:
        return _fail(str(err))
    except TrainingError as err:
        return _fail(str(err), code=1)
    except KeyboardInterrupt:
        return _fail("interrupted", code=130)


if __name__ == "__main__":
    sys.exit(main())
