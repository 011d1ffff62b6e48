"""A Python process that sends itself a signal from inside a weakref callback, where Python drops
what the signal's handler raises (it reports it to sys.unraisablehook and goes on), and prints
whether the code around it was stopped: the scenario of the tests of each signal handler."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, signal, time, weakref

    {setup}

    class Thing:
        pass

    def signalled_inside(_ref):
        os.kill(os.getpid(), signal.{signal})
        for _ in range(1000):  # the handler runs here, in the callback, which drops what it raises
            pass

    try:
        with {context}:
            thing = Thing()
            ref = weakref.ref(thing, signalled_inside)
            del thing
            time.sleep({seconds})
            print("not stopped", flush=True)
    except {stopped_by}:
        print("stopped", flush=True)
    {after}
""")


def run(setup: str, context: str, signal: str, stopped_by: str, after: str = "", seconds: int = 10):
    """The process's result; `setup` and `after` are code at the top level (dedented here)."""
    script = SCRIPT.format(
        setup=textwrap.dedent(setup).strip(),
        context=context,
        signal=signal,
        stopped_by=stopped_by,
        after=textwrap.dedent(after).strip(),
        seconds=seconds,
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
