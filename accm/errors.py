"""Errors a user can cause and fix; every console script turns them into one line and exit 2."""


class AccmUserError(Exception):
    """Base class: bad input, bad flag, missing model, missing or altered bundle."""


class InputError(AccmUserError, ValueError):
    """An image or prompt the pipeline cannot take."""


class PruningError(AccmUserError, ValueError):
    """A pruning setting (schedule, CLIP score layer) that does not fit the model or the input."""
