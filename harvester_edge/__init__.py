"""harvester-edge: keep an HPC site's batch system busy with MPI pilots that process jumbo event ranges."""

__version__ = "0.1.0"
