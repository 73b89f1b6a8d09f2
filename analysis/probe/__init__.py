"""``make probe``: the symmetry-breaking study of Langer, Pozdnyakov & Ceriotti (2024) for any
served model, in one command (``mlip-probe MODEL --level quick|full``).

Sections (each measured by the command itself; :mod:`mlip_server.analysis.probe.pipeline` runs them in
order, :mod:`mlip_server.analysis.probe.cli` is the command line):

1. error convergence of rotational averaging (``none, i, 2, 2i, 3, 3i`` vs a finer grid),
   plus errors against reference labels when the dataset has them (:mod:`.static`);
2. cost per evaluation of each grid and the effective cost of multiple time stepping (:mod:`.static`);
3. gas-phase molecule NVE, raw vs ``2i``: energy drift, angular momentum, torque (:mod:`.dynamics`);
4. bulk liquid NVT, raw vs MTS-averaged vs random rotation: g_OO, dipole orientation,
   c_L/c_T, MSD/diffusion, dipole autocorrelation (:mod:`.dynamics`);
5. ice: relative energies of proton-disordered cells, raw vs averaged (:mod:`.static`);
6. a verdict per section computed from the numbers (:mod:`.report`).
"""
