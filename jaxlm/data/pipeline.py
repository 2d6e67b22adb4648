"""The input pipeline: sources → mixture → pieces → tokenize → pack/mask → shuffled rows.

One background thread does all the work (reading, batched tokenization with HF `tokenizers`,
packing, row shuffling, masking; ``producer.py``) and queues up to ``data.prefetch`` finished
batches, so the training step never waits on the host. Each queued batch travels with a
*snapshot* of the producer's position right after that batch; ``__next__`` hands out the
batch and keeps its snapshot, so ``state_dict()`` always describes exactly the batches
already handed out, however far ahead the thread has run.

Exact resume, from positions only (no text, so ``state_dict()`` is small and cheap whatever
the documents): per source the epoch, the `datasets` state of that epoch's unshuffled stream,
examples read past it and characters handed out of the one in progress; the mixture's RNG;
the tokenizer's carried token; the packer's place in its last round of pieces; the row
window's number and how many of its rows went out; counters (rows, so MLM masks stay keyed
by row number; batches; stats). Per-host mixing, masking and row order are seeded from
``data.seed`` and the process index; shard order from ``data.seed``, the source and the epoch
(the same on every host, as ``split_dataset_by_node`` requires).
"""

from __future__ import annotations

import copy
import hashlib
import queue
import threading
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from jaxlm.config import DataConfig, SourceConfig
from jaxlm.data.mlm import MaskCollator
from jaxlm.data.packing import Packer, empty_batch
from jaxlm.data.producer import PieceTokenizer, Producer
from jaxlm.data.sources import DataError, DataWarning, SourceStream
from jaxlm.data.stream import DocumentStream
from jaxlm.data.textfiles import PIECE_CHARS
from jaxlm.data.tokenizer import load_tokenizer, special_ids

if TYPE_CHECKING:
    import jax
    from tokenizers import Tokenizer

__all__ = [
    "DataError", "DataWarning", "Pipeline", "build_pipeline", "check_vocab", "to_global",
]

STATE_VERSION = 2  # 1 carried document texts; 2 carries positions only
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
        encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

        stats: dict[str, int] = {}  # reading counters, shared by the sources and the producer
        streams = [
            SourceStream(s, i, data.seed, self.shuffle, repeat, process_index, process_count,
                         stats)
            for i, s in enumerate(sources)
        ]
        docs = DocumentStream(streams, [s.weight for s in sources], data.seed, process_index)
        shuffle_rows = data.shuffle_rows if self.shuffle else 0
        self._producer = Producer(
            docs, PieceTokenizer(encode, self.special.eos, data.mode),
            Packer(data.seq_len, data.mode, data.truncate), local_batch, self._pad,
            shuffle_rows, data.seed, process_index, self._mlm, stats)
        self._fingerprint = {
            "seq_len": data.seq_len, "mode": data.mode, "seed": data.seed,
            "shuffle": self.shuffle, "shuffle_rows": shuffle_rows, "piece_chars": PIECE_CHARS,
            "truncate": data.truncate, "mlm_probability": data.mlm_probability,
            "sources": [s.model_dump(mode="json") for s in sources],
            "tokenizer": hashlib.sha1(tokenizer.to_str().encode()).hexdigest()[:16],
            "process_index": process_index, "process_count": process_count,
        }
        self._state = self._producer.snapshot()
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._stale = False  # the producer ran ahead of self._state (thread was stopped)
        self._done = False

    # ------------------------------------------------------------------------- producing

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
            for item in self._producer.batches(stop):
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer thread
            put(e)

    def _start(self) -> None:
        if self._stale:
            self._producer.restore(self._state)
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
        """JSON-serializable state after the last batch returned by ``__next__``: positions
        and counters only (a few KB, whatever the documents), copied so it stays valid."""
        s = self._state
        return copy.deepcopy({
            "version": STATE_VERSION,
            "fingerprint": self._fingerprint,
            "rows": s["rows"], "batches": s["batches"], "finished": s["finished"],
            "stats": s["stats"], "anchor": s["anchor"], "used": s["used"],
        })

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly after the batches that ``state`` was taken after."""
        if not isinstance(state, dict) or "fingerprint" not in state:
            raise DataError("not a data pipeline state (expected Pipeline.state_dict() output)")
        if state.get("version") != STATE_VERSION:
            raise DataError(
                f"data pipeline state version {state.get('version')!r} cannot be resumed by this "
                f"jaxlm (state version {STATE_VERSION}: positions instead of document texts); "
                "start the data stream afresh by not loading its state")
        saved = state["fingerprint"]
        for key, now in self._fingerprint.items():
            if saved.get(key) != now:
                raise DataError(
                    f"data pipeline state was saved with {key}={saved.get(key)!r} but this run "
                    f"has {key}={now!r}; it cannot resume exactly (start the data stream afresh "
                    "by not loading its state)")
        self.close()
        self._state = {k: copy.deepcopy(state[k]) for k in
                       ("rows", "batches", "finished", "stats", "anchor", "used")}
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
