"""Exceptions that mean "the user asked for something wrong".

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


def one_line(text: str) -> str:
    """``text`` with line breaks escaped: an error message is one line even when it quotes
    the user's input."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


class RaydprmError(Exception):
    """Base class for errors caused by user input (config, data, arguments). Its message is
    always one line (line breaks in quoted input are escaped)."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class ConfigError(RaydprmError, ValueError):
    """A config key is unknown, has the wrong type or is out of range."""


class DiskFull(RaydprmError):
    """A write failed because its file system is full (or over quota); the message names the
    path and what was being written, and the partial file is gone."""


_DISK_FULL_WORDS = ("no space left on device", "disk quota exceeded", "enospc", "not enough space",
                    "database or disk is full", "storagefull")


def is_disk_full(exc: BaseException | None) -> bool:
    """``exc`` (or an exception it wraps: a cause, a context, Ray's ``cause``) is a full disk:
    ``OSError(ENOSPC/EDQUOT)``, or a library's own error that says so (safetensors, torch's zip
    writer report it in words only)."""
    import errno

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(w in str(exc).lower() for w in _DISK_FULL_WORDS):
            return True
        exc = getattr(exc, "cause", None) or exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return False


def disk_full(path: object, what: str) -> DiskFull:
    """The one-line error for a full disk at ``path`` while writing ``what``."""
    return DiskFull(f"no space left on the device of '{path}' while writing {what}; free space there "
                    "(or point the output elsewhere) and run again")


class Terminated(SystemExit):
    """SIGTERM or SIGINT arrived (:func:`install_signal_handlers`): unwinds through every
    ``finally`` (actors, Serve and an owned Ray shut down); the CLI prints one line and exits
    128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


_received: list[int] = []  # the signals this process received (a Ray wait swallows the exception itself)


def received_signal() -> int | None:
    """The first SIGTERM/SIGINT this process received since the handlers were installed, if any."""
    return _received[0] if _received else None


def note_signal(signum: int) -> None:
    """Remember ``signum`` as received (a handler other than :func:`on_signal` caught it)."""
    _received.append(signum)


def on_signal(signum: int, frame: object) -> None:
    """The handler for SIGTERM and SIGINT: remembers the signal, then unwinds (SIGINT as Ctrl-C
    always does, ``KeyboardInterrupt``; SIGTERM as :class:`Terminated`)."""
    import signal

    _received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def install_signal_handlers() -> dict[int, object]:
    """SIGTERM and SIGINT go through :func:`on_signal` (main thread only; elsewhere a no-op).
    Returns the handlers it replaced (for :func:`restore_signal_handlers`)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    _received.clear()
    return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}


def restore_signal_handlers(old: dict[int, object]) -> None:
    import signal

    for sig, handler in old.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def writing(path: object, what: str):
    """A context manager for writing ``path`` (a file or a directory) whole or not at all::

        with writing(out, "the store export") as tmp:
            ds.save_to_disk(str(tmp))

    The block writes ``tmp`` (a sibling of ``path``); on success it replaces ``path``; on any
    failure ``tmp`` is removed (no partial file is left) and a full disk becomes
    :class:`DiskFull` naming ``path`` and ``what``."""
    import contextlib
    import os
    import shutil
    from pathlib import Path

    @contextlib.contextmanager
    def _writing():
        target = Path(str(path))
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")

        def remove(p: Path) -> None:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

        remove(tmp)
        try:
            yield tmp
            if target.is_dir() and not target.is_symlink() and tmp.is_dir():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException as e:
            remove(tmp)
            if isinstance(e, Exception) and is_disk_full(e):
                raise disk_full(target, what) from None
            raise

    return _writing()
