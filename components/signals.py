"""Signal handlers that raise, made reliable. A handler runs wherever the main thread is, and Python
drops an exception raised inside a weakref callback or a __del__ method (it reports it to
sys.unraisablehook instead): a SIGTERM could be lost so, and a cancelled run or step go on to its
end. A leaf module."""

import os
import sys
import threading
from typing import Any, Callable, List, Optional, Tuple, Type

# A dropped exception's signal is sent again this much later, once the code that dropped it has returned.
RESEND_S = 0.05


def _nothing() -> None:
    pass


class ResentWhenDropped:
    """While entered: when Python drops an exception of `raised` that a signal's handler raised, the
    same signal is sent again RESEND_S later, from another thread; `rearm` first puts back the handler
    if the first signal replaced it. The handler calls `received(number)` before it raises."""

    def __init__(self, raised: Tuple[Type[BaseException], ...], rearm: Callable[[], None] = _nothing):
        self._raised = raised
        self._rearm = rearm
        self._signal: Optional[int] = None
        self._resends: List[threading.Timer] = []
        self._previous_hook: Callable[[Any], Any] = sys.unraisablehook

    def received(self, number: int) -> None:
        self._signal = number

    def _dropped(self, unraisable: Any) -> None:
        ours = self._signal is not None and issubclass(unraisable.exc_type, self._raised)
        if not (ours and threading.current_thread() is threading.main_thread()):  # handlers run in the main thread
            self._previous_hook(unraisable)
            return
        self._rearm()
        resend = threading.Timer(RESEND_S, os.kill, (os.getpid(), self._signal))
        self._resends.append(resend)
        resend.start()

    def __enter__(self) -> "ResentWhenDropped":
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._dropped
        return self

    def __exit__(self, *exc: Any) -> bool:
        for resend in self._resends:
            resend.cancel()
        sys.unraisablehook = self._previous_hook
        return False
