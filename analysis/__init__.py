"""Trajectory analysis on MDAnalysis (``mlip-analyse``).

run_folder -- the files of an i-PI run (a folder or one of its files): find_run_files, bead_files
readers    -- Universe with box and elements from i-PI xyz/extxyz/pdb (beads), LAMMPS dumps, ...
ipi_files  -- i-PI properties (.out) files
units      -- i-PI units to analysis units (one table: mlip_server.protocol.ATOMIC_UNITS)
rdf        -- g(r) and coordination numbers (InterRDF + block errors)
msd        -- unwrapped MSD and self-diffusion (tidynamics FFT, Yeh-Hummer)
dipoles    -- dipole orientation, c_L/c_T pair correlations, C1/C2 reorientation, dielectric constant
symmetry   -- ΔV statistics, energy drift, angular momentum and torque
statistics -- block averages, autocorrelation times, Welch's t test
uncertainty -- i-PI extras files of a committee and their statistics
commands/  -- one module per sub-command (runs the analysis, writes tables and summary.json)
plots      -- the figure of each sub-command;  output -- tables, PNG, summary.json;  cli -- the command line
probe      -- ``mlip-probe``, the symmetry-breaking study of a model
"""
