"""What a per-epoch training callback may do besides watching: ask training to stop."""


class StopTraining(Exception):
    """Raised by a per-epoch callback of either engine (a sweep's pruner, say): training ends after
    that epoch and the run directory is still written, marked as stopped early."""
