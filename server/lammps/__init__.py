"""The LAMMPS side: decks, MPI helpers, the bridge (``mlip-lammps``) and the runner that starts the
bridge with its server (``mlip-lammps-run``)."""
