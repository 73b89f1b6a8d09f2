"""The force server: TorchScript MLIPs served to i-PI and LAMMPS (see README.md).

Sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it: the server shares the CPU with
i-PI or LAMMPS, and OpenMP threads that spin while waiting made 2-thread model calls up to
50× slower on a loaded 2-core machine. It only takes effect if torch is not yet imported.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
