"""jaxlm/runtime/quiet.py: library noise after a failure that jaxlm reports in one line."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]

_UNSTARTED = """
import sys
from jaxlm.runtime.quiet import quiet_orbax_leftovers

def async_serialize_from_host():  # named as Orbax's; its fragment writes never start
    async def write_fragment():
        pass
    return write_fragment()

def other():
    async def write_fragment():
        pass
    return write_fragment()

quiet_orbax_leftovers(lambda text: None)
kept = [async_serialize_from_host(), other()]
print("jaxlm: error: the disk is full", file=sys.stderr)
del kept  # collected after the error line, as at exit
"""


def test_orbax_writes_that_never_started_do_not_warn_after_the_error_line():
    """A full disk on CI left Orbax's unstarted fragment writes to be collected at exit, and
    Python's "never awaited" warning came after the error line; only Orbax's is dropped."""
    proc = subprocess.run([sys.executable, "-c", _UNSTARTED], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "async_serialize_from_host" not in proc.stderr
    assert "coroutine 'other.<locals>.write_fragment' was never awaited" in proc.stderr


_UNRETRIEVED = """
import asyncio, gc, sys
from jaxlm.runtime.quiet import quiet_orbax_leftovers

kept = []
quiet_orbax_leftovers(lambda text: kept.append(text))
loop = asyncio.new_event_loop()
for path in ("/run/checkpoints/4.orbax-checkpoint-tmp/state/d/1", "/elsewhere/d/1"):
    future = loop.create_future()  # as tensorstore's write future of an uncommitted step
    future.set_exception(ValueError(f"RESOURCE_EXHAUSTED: Failed writing: {path!r}"))
    del future
    gc.collect()
print("jaxlm: error: the disk is full", file=sys.stderr)
print(len(kept), "orbax-checkpoint-tmp" in kept[0])
"""


def test_unretrieved_write_futures_of_an_uncommitted_step_go_to_the_log():
    """A full disk on CI: tensorstore's failed write future was collected after jaxlm's error
    line and asyncio logged it to the terminal; only those of an Orbax step are dropped."""
    proc = subprocess.run([sys.executable, "-c", _UNRETRIEVED], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "True"]  # the Orbax one went to the sink
    assert "orbax-checkpoint-tmp" not in proc.stderr
    assert "/elsewhere/d/1" in proc.stderr  # any other is still shown
