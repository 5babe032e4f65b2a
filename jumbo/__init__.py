"""jumbo: the MPI multi-node pilot that runs event-range payloads on compute nodes.

The harvester imports only :mod:`jumbo.protocol` (the shared-file messenger formats, both sides).
"""
