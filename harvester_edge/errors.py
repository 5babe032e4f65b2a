"""One exception hierarchy for the whole appliance: catch HarvesterEdgeError at the edges (CLI, agent loops)."""


class HarvesterEdgeError(Exception):
    """Base class: something the operator can act on; the message says what failed and what to do."""


class ConfigError(HarvesterEdgeError):
    """A site config or task file is unreadable or invalid; the message names the file, the key and the expectation."""


class StoreError(HarvesterEdgeError):
    """The bookkeeping database cannot be used as asked (schema too new, network file system, ...)."""


class IllegalTransition(StoreError):
    """A state change that the state machine does not allow (e.g. a finished worker back to running)."""


class LeaseLost(StoreError):
    """An agent updated a row whose lease it no longer holds (it expired and another agent claimed the row)."""
