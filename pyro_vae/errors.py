"""The one exception type a user can cause; the CLI prints it as one line and exits 2."""


class PyroVAEError(Exception):
    """Bad input or an unusable run: names, files, shapes, values, devices, checkpoints."""


class TrainingDiverged(PyroVAEError):
    """The loss became NaN or infinite; the last good checkpoint is left in place."""


def interrupted(err: BaseException) -> bool:
    """Whether ``err`` is a Ctrl-C or came of one: a KeyboardInterrupt raised inside a C
    extension's initialization surfaces as the ImportError it caused."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False
