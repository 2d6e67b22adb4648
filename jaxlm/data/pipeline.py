"""The input pipeline: sources → mixture → shuffle → tokenize → pack/mask → local batches.

One background thread does all the work (reading, batched tokenization with HF `tokenizers`,
packing, masking) and queues up to ``data.prefetch`` finished batches, so the training step
never waits on the host. Each queued batch travels with a *snapshot* of the producer's state
taken right after that batch was completed; ``__next__`` hands out the batch and keeps its
snapshot, so ``state_dict()`` always describes exactly the batches already handed out, however
far ahead the thread has run.

Exact resume. A snapshot is everything that determines the rest of the stream:

* per source: the epoch, and the `datasets` state of that epoch's unshuffled stream (exact for
  plain json/parquet/csv/text streams; our own seeded shard order per epoch is rebuilt from
  (seed, source, epoch));
* the mixture's and the shuffle buffer's RNG states and the texts in the buffer;
* the packer's carry: texts of documents read but not yet fully emitted, plus how many items of
  the first were emitted (tokenization is deterministic, so texts are re-tokenized on load);
* counters (rows, so MLM masks stay keyed by row number; batches; stats).

Texts are stored zlib-compressed and base64-encoded, so the state is plain JSON. Per-host
shuffling, masking and mixing are seeded from ``data.seed`` and the process index; shard order
from ``data.seed``, the source and the epoch (the same on every host, as
``split_dataset_by_node`` requires).
"""

from __future__ import annotations

import base64
import hashlib
import json
import queue
import threading
import zlib
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from jaxlm.config import DataConfig, SourceConfig
from jaxlm.data.mlm import MaskCollator
from jaxlm.data.packing import Doc, Packer, empty_batch, make_doc
from jaxlm.data.sources import DataError, DataWarning, SourceStream
from jaxlm.data.stream import DocumentStream
from jaxlm.data.tokenizer import load_tokenizer, special_ids

if TYPE_CHECKING:
    import jax
    from tokenizers import Tokenizer

__all__ = [
    "DataError", "DataWarning", "Pipeline", "build_pipeline", "check_vocab", "to_global",
]

TOKENIZE_DOCS = 64  # documents per batched tokenizer call
STATE_VERSION = 1
_END = object()  # queue sentinel: the (finite) stream is over


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """Raise DataError if the tokenizer can emit ids the model's embedding does not have.

    Called by the training loop at start-up, before anything is compiled.
    """
    n = tokenizer.get_vocab_size(with_added_tokens=True)
    if n > model_vocab_size:
        raise DataError(
            f"the tokenizer has {n} tokens but model.vocab_size={model_vocab_size}; set "
            f"model.vocab_size>={n} (a multiple of 128 is fastest) or use a smaller tokenizer"
        )


def _pack_texts(texts: list[str]) -> str:
    return base64.b64encode(zlib.compress(json.dumps(texts).encode(), 1)).decode("ascii")


def _unpack_texts(blob: str) -> list[str]:
    return json.loads(zlib.decompress(base64.b64decode(blob)))


class Pipeline:
    """An iterator of local batches; see the module docstring for threading and resume.

    Each batch maps ``inputs``, ``targets``, ``segment_ids``, ``positions`` (int32) and
    ``weights`` (float32) to arrays of shape ``(local_batch, data.seq_len)``. With
    ``repeat=False`` the stream ends after one pass over this host's data; the last batch is
    completed with padding rows (weight 0).
    """

    def __init__(
        self, data: DataConfig, sources: list[SourceConfig], tokenizer: Tokenizer,
        local_batch: int, process_index: int = 0, process_count: int = 1, repeat: bool = True,
        *, shuffle: bool | None = None,
    ) -> None:
        if local_batch <= 0:
            raise DataError(f"local batch size must be positive, got {local_batch}")
        if not 0 <= process_index < process_count:
            raise DataError(f"process_index={process_index} is not in [0, {process_count})")
        if not sources:
            raise DataError("the pipeline needs at least one data source")
        self.data, self.local_batch, self.repeat = data, local_batch, repeat
        self.process_index, self.process_count = process_index, process_count
        self.shuffle = data.shuffle if shuffle is None else shuffle
        self.tokenizer = tokenizer
        self.special = special_ids(tokenizer)
        if self.special.eos is None:
            raise DataError("the tokenizer has no end-of-text token (<|endoftext|>, </s> or "
                            "[SEP]); the pipeline needs one between documents")
        self._pad = self.special.pad if self.special.pad is not None else self.special.eos
        self._mlm: MaskCollator | None = None
        if data.mode == "mlm":
            if self.special.mask is None:
                raise DataError("data.mode=mlm needs a mask token (<|mask|>, <mask> or [MASK]) "
                                "in the tokenizer")
            added = tokenizer.get_added_tokens_decoder()
            specials = {i for i, t in added.items() if t.special} | {
                i for i in (self.special.pad, self.special.eos, self.special.mask) if i is not None}
            self._mlm = MaskCollator(
                data.mlm_probability, self.special.mask, tokenizer.get_vocab_size(), specials,
                data.seed, process_index)
        self._encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

        self._live_stats: dict[str, int] = {}
        streams = [
            SourceStream(s, i, data.seed, self.shuffle, repeat, process_index, process_count,
                         self._live_stats)
            for i, s in enumerate(sources)
        ]
        self._docs = DocumentStream(streams, [s.weight for s in sources], data.seed,
                                    process_index, self.shuffle, data.shuffle_buffer)
        self._packer = Packer(data.seq_len, data.mode, data.truncate)
        self._rows = self._batches = 0
        self._finished = False
        self._fingerprint = {
            "seq_len": data.seq_len, "mode": data.mode, "seed": data.seed,
            "shuffle": self.shuffle, "shuffle_buffer": data.shuffle_buffer,
            "truncate": data.truncate, "mlm_probability": data.mlm_probability,
            "sources": [s.model_dump(mode="json") for s in sources],
            "tokenizer": hashlib.sha1(tokenizer.to_str().encode()).hexdigest()[:16],
            "process_index": process_index, "process_count": process_count,
        }
        self._state = self._snapshot()
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._stale = False  # the live objects ran ahead of self._state (thread was stopped)
        self._done = False

    # ------------------------------------------------------------------------- producing

    def _tokenize(self, texts: list[str]) -> list[Doc]:
        if not texts:
            return []
        enc = self._encode(texts, add_special_tokens=False)
        eos, mode = self.special.eos, self.data.mode
        return [make_doc(t, e.ids, eos, mode) for t, e in zip(texts, enc, strict=True)]

    def _snapshot(self) -> dict[str, Any]:
        return {
            "docs": self._docs.state(), "packer": self._packer.state(), "rows": self._rows,
            "batches": self._batches, "finished": self._finished, "stats": dict(self._live_stats),
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        self._docs.restore(snap["docs"])
        self._packer.restore(self._tokenize(snap["packer"]["texts"]), snap["packer"]["offset"])
        self._rows, self._batches = snap["rows"], snap["batches"]
        self._finished = snap["finished"]
        self._live_stats.clear()
        self._live_stats.update(snap["stats"])

    def _produce(self) -> Any:
        """Yield (batch, snapshot after it) until a finite stream ends."""
        B, L = self.local_batch, self.data.seq_len
        while not self._finished:
            batch = empty_batch(B, L, self._pad)
            r = 0
            while r < B:
                if self._packer.fill_row(batch, r):
                    r += 1
                elif texts := self._docs.take(TOKENIZE_DOCS):
                    self._packer.add(self._tokenize(texts))
                elif self._packer.flush(batch, r):
                    r += 1
                else:
                    self._finished = True
                    break
            if r == 0:
                return
            if self._mlm is not None:
                self._mlm(batch, self._rows)
            self._rows += r
            self._batches += 1
            stats = self._live_stats
            stats["tokens"] = stats.get("tokens", 0) + int(np.count_nonzero(batch["segment_ids"]))
            yield batch, self._snapshot()

    def _run(self, q: queue.Queue, stop: threading.Event) -> None:
        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        try:
            for item in self._produce():
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer thread
            put(e)

    def _start(self) -> None:
        if self._stale:
            self._restore(self._state)
            self._stale = False
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.data.prefetch)
        self._thread = threading.Thread(
            target=self._run, args=(self._queue, self._stop), name="jaxlm-data", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------------------- consuming

    def __iter__(self) -> Pipeline:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._done:
            raise StopIteration
        if self._thread is None:
            self._start()
        assert self._queue is not None
        item = self._queue.get()
        if item is _END:
            self._done = True
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        batch, self._state = item
        return batch

    def padding_batch(self) -> dict[str, np.ndarray]:
        """An all-padding batch (weight 0 everywhere), shaped like every other batch.

        For multi-host eval over finite streams, whose hosts may run out after different
        numbers of batches: a host that is done can feed this so all stay in step.
        """
        return empty_batch(self.local_batch, self.data.seq_len, self._pad)

    @property
    def stats(self) -> dict[str, int]:
        """Counters up to the last batch handed out: documents, tokens (non-padding positions),
        empty_skipped, utf8_replaced (documents with bytes that were not UTF-8)."""
        return dict(self._state["stats"])

    def close(self) -> None:
        """Stop the background thread; iteration may continue later from the same point."""
        if self._thread is None:
            return
        self._stop.set()
        assert self._queue is not None
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()
        self._thread, self._queue = None, None
        self._stale = True

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state after the last batch returned by ``__next__``."""
        s = self._state
        return {
            "version": STATE_VERSION,
            "fingerprint": self._fingerprint,
            "rows": s["rows"], "batches": s["batches"], "finished": s["finished"],
            "stats": dict(s["stats"]),
            "sources": s["docs"]["sources"],
            "mix_rng": s["docs"]["mix_rng"], "buffer_rng": s["docs"]["buffer_rng"],
            "buffer": _pack_texts(s["docs"]["buffer"]),
            "carry": _pack_texts(s["packer"]["texts"]), "carry_offset": s["packer"]["offset"],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly after the batches that ``state`` was taken after."""
        if not isinstance(state, dict) or "fingerprint" not in state:
            raise DataError("not a data pipeline state (expected Pipeline.state_dict() output)")
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data pipeline state version {state.get('version')!r} is not "
                            f"{STATE_VERSION}; it was written by another jaxlm version")
        saved = state["fingerprint"]
        for key, now in self._fingerprint.items():
            if saved.get(key) != now:
                raise DataError(
                    f"data pipeline state was saved with {key}={saved.get(key)!r} but this run "
                    f"has {key}={now!r}; it cannot resume exactly (start the data stream afresh "
                    "by not loading its state)")
        self.close()
        self._state = {
            "docs": {"sources": state["sources"], "mix_rng": state["mix_rng"],
                     "buffer_rng": state["buffer_rng"], "buffer": _unpack_texts(state["buffer"])},
            "packer": {"texts": _unpack_texts(state["carry"]), "offset": state["carry_offset"]},
            "rows": state["rows"], "batches": state["batches"], "finished": state["finished"],
            "stats": dict(state["stats"]),
        }
        self._stale = True
        self._done = False


def build_pipeline(
    data: DataConfig, split: Literal["train", "eval"], local_batch: int,
    process_index: int = 0, process_count: int = 1, *, repeat: bool | None = None,
) -> Pipeline:
    """The train stream (``data.train``: shuffled, repeating) or the eval stream (``data.eval``:
    unshuffled, one pass unless ``repeat=True``), with ``data.tokenizer``."""
    if split == "train":
        sources, shuffle, rep = data.train, None, True if repeat is None else repeat
    elif split == "eval":
        if data.eval is None:
            raise DataError("data.eval is null: no held-out sources are configured for eval")
        sources, shuffle, rep = data.eval, False, False if repeat is None else repeat
    else:
        raise DataError(f"split must be 'train' or 'eval', got {split!r}")
    tokenizer = load_tokenizer(data.tokenizer)
    return Pipeline(data, sources, tokenizer, local_batch, process_index, process_count, rep,
                    shuffle=shuffle)


def to_global(
    batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding,
) -> dict[str, jax.Array]:
    """Assemble every process's local batch into global arrays with the batch sharding."""
    import jax

    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}
