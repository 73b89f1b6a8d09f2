"""The force server: TorchScript MLIPs served to i-PI and LAMMPS (see README.md).

OpenMP's wait policy is left to the user (``OMP_WAIT_POLICY``) and otherwise to the OpenMP runtime,
whose threads spin briefly between parallel regions. Measured on 2 idle cores (192-atom water, 2
threads, i-PI classical NVT): 90 ms per step with the runtime's default, 127 ms with ``PASSIVE``;
with one other busy process on the cores the order flips (330 vs 155 ms). Our launchers therefore
give ``PASSIVE`` (:func:`mlip_server.machine.shared_cores_env`) to the servers they start next to
other busy processes (several servers of one run, LAMMPS's MPI ranks), and a server started on a
loaded machine says so in its log (:func:`mlip_server.machine.wait_policy_hint`).
"""
