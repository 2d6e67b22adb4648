"""The PyTorch side of benchmarks/finetune_vs_pytorch.py: fine-tune a Hugging Face encoder
for classification the way a PyTorch + transformers user writes it.

Mean pooling over the attention mask and a linear head on ``AutoModel``, AdamW (lr, weight
decay 0.01, 10% linear warm-up then linear decay, as jaxlm's fine-tuning defaults), batches
padded to their longest text (dynamic padding, shuffled), one pass over the training file,
then accuracy on the validation file. Prints one JSON line: examples, accuracy, seconds.

    python benchmarks/torch_finetune_loop.py MODEL_DIR DATA_DIR --max-length 128
        [--batch-size 32] [--lr 5e-4] [--epochs 1] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    args = ap.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    random.seed(0)
    train, val = read(Path(args.data) / "train.jsonl"), read(Path(args.data) / "validation.jsonl")
    labels = sorted({r["label"] for r in train})
    index = {name: i for i, name in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(args.model)
    encoder = AutoModel.from_pretrained(args.model)
    head = torch.nn.Linear(encoder.config.hidden_size, len(labels))
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    steps = args.epochs * -(-len(train) // args.batch_size)
    warm = max(1, int(0.1 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))

    def logits(rows: list[dict]) -> torch.Tensor:
        enc = tok([r["text"] for r in rows], truncation=True, max_length=args.max_length,
                  padding=True, return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            hidden = encoder(**enc).last_hidden_state  # [B, T, D]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # [B, D]
            return head(pooled).float()  # [B, C]

    encoder.train()
    for _ in range(args.epochs):
        order = list(range(len(train)))
        random.shuffle(order)
        for i in range(0, len(order), args.batch_size):
            rows = [train[j] for j in order[i:i + args.batch_size]]
            target = torch.tensor([index[r["label"]] for r in rows])
            loss = torch.nn.functional.cross_entropy(logits(rows), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
    encoder.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(val), 64):
            rows = val[i:i + 64]
            pred = logits(rows).argmax(-1).tolist()
            right += sum(index.get(r["label"], -1) == p for r, p in zip(rows, pred, strict=True))
    print(json.dumps({"examples": len(train), "accuracy": right / len(val),
                      "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
