"""Opening a Hugging Face hub dataset, with one-line errors when it cannot be had.

Both the pretraining sources (``data.train`` / ``data.eval``) and fine-tuning's labeled data
(``finetune.data``) may name a hub dataset. When the hub cannot be reached, `datasets` and
huggingface_hub retry for ~24 s and log every retry twice (22 lines); :func:`load_hub` keeps
those warnings off the terminal and turns the outcome into one :class:`DataError` line, which
says to set ``HF_HUB_OFFLINE=1`` only when offline mode is not already on (with it on, the
dataset is simply not in the local cache).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from jaxlm.data.errors import DataError
from jaxlm.runtime.quiet import quiet_hub_retries


def offline_settings() -> list[str]:
    """The environment settings that put `datasets` in offline mode (``NAME=value``); empty
    when it is online."""
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        return []
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    found = [f"{n}={os.environ[n]}" for n in names if os.environ.get(n, "").upper() in
             ("1", "ON", "YES", "TRUE")]
    return found or ["HF_HUB_OFFLINE"]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_hub(load: Callable[[], Any], label: str, local_hint: str) -> Any:
    """``load()`` (a ``datasets.load_dataset`` call for hub dataset ``label``), quietly; a
    hub that cannot be reached is one :class:`DataError` whose advice ends with
    ``local_hint`` (where to point the setting at local files instead). Other errors pass."""
    try:
        with quiet_hub_retries():
            return load()
    except (ConnectionError, TimeoutError) as e:
        offline = offline_settings()
        if offline:
            raise DataError(
                f"hub dataset {label!r} is not in the local Hugging Face cache and offline "
                f"mode is on ({', '.join(offline)}), so it is not downloaded; {local_hint}, or "
                "turn offline mode off on a machine that can reach the hub") from None
        raise DataError(
            f"hub dataset {label!r} cannot be reached ({_first_line(e)}); this machine may be "
            f"offline: {local_hint} (with HF_HUB_OFFLINE=1 this fails at once instead of "
            "retrying)") from None
