"""The one exception type a user can cause; the CLI prints it as one line and exits 2."""


class PyroVAEError(Exception):
    """Bad input or an unusable run: names, files, shapes, values, devices, checkpoints."""


class TrainingDiverged(PyroVAEError):
    """The loss became NaN or infinite; the last good checkpoint is left in place."""
