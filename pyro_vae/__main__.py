"""``python -m pyro_vae`` and the ``pyro-vae`` command: a Ctrl-C at any moment, the first seconds of
importing torch and Pyro included, ends the program with one line and exit code 130."""

import os
import signal
import sys

from .errors import interrupted

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program a Ctrl-C ended


def _say_interrupted() -> int:
    print("pyro-vae: interrupted", file=sys.stderr)
    return INTERRUPTED


def _exit_now(signum, frame):
    _say_interrupted()
    sys.stderr.flush()
    os._exit(INTERRUPTED)


def main() -> int:
    # Until the commands are imported a Ctrl-C ends the program from the signal handler, at once:
    # raised as a KeyboardInterrupt inside whichever import is running, a C extension's
    # initialization (torch's, matplotlib's) would turn it into an ImportError and a traceback,
    # and the interpreter would then tear down half-imported modules. Nothing is written yet, so
    # nothing is lost. A SIGINT the caller ignores (a job started in the background) stays ignored.
    catch = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if catch:
        signal.signal(signal.SIGINT, _exit_now)
    try:
        from .cli import main as cli_main
    finally:
        if catch:
            signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = cli_main()
    except BaseException as err:  # a Ctrl-C in the moments around a command's own handling of it
        if not interrupted(err):
            raise
        code = _say_interrupted()
    if code == INTERRUPTED:
        # A KeyboardInterrupt that broke into Python code run by a C extension (pybind11's exec)
        # leaves CPython set to end the process by SIGINT after teardown, instead of by this exit
        # code. The run's files are complete or untouched (atomic writes), so skip the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    return code


if __name__ == "__main__":
    sys.exit(main())
