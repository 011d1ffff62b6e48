"""A signal whose handler's exception Python drops is sent again: real processes, signalled inside a
weakref callback (where Python reports an exception to sys.unraisablehook and goes on)."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # fresh Python processes

SIGNALLED_INSIDE_A_WEAKREF_CALLBACK = textwrap.dedent("""
    import os, signal, sys, time, weakref
    from triplet_tfx.components.signals import ResentWhenDropped

    class Stop(Exception):
        pass

    def handler(number, _frame):
        resent.received(number)
        raise Stop

    class Thing:
        pass

    def signalled_inside(_ref):
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(1000):  # the handler runs here, in the callback, which drops what it raises
            pass

    signal.signal(signal.SIGUSR1, handler)
    resent = ResentWhenDropped((Stop,))
    with {context}:
        try:
            thing = Thing()
            ref = weakref.ref(thing, signalled_inside)
            del thing
            time.sleep(2)
            print("not stopped", flush=True)
        except Stop:
            print("stopped", flush=True)
    unrelated = Thing()
    weakref_to_unrelated = weakref.ref(unrelated, lambda _ref: 1 / 0)
    del unrelated  # after the block: reported as Python does
""")


def run(context: str) -> subprocess.CompletedProcess:
    script = SIGNALLED_INSIDE_A_WEAKREF_CALLBACK.format(context=context)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_a_dropped_exception_of_a_handler_is_raised_again_by_the_same_signal():
    completed = run("resent")
    assert completed.stdout == "stopped\n", completed.stderr
    assert "Exception ignored in: <function signalled_inside" not in completed.stderr
    assert "ZeroDivisionError" in completed.stderr  # the previous hook is back


def test_without_it_python_drops_the_exception_and_goes_on():
    # The reference: what happens to a signal's exception raised inside a weakref callback.
    completed = run("open(os.devnull)")
    assert completed.stdout == "not stopped\n"
    assert "Exception ignored in: <function signalled_inside" in completed.stderr
