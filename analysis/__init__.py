"""Trajectory analysis on MDAnalysis (``mlip-analyse``).

readers    -- Universe with box and elements from i-PI xyz/extxyz/pdb (beads), LAMMPS dumps, ...
rdf        -- g(r) and coordination numbers (InterRDF + block errors)
msd        -- unwrapped MSD and self-diffusion (tidynamics FFT, Yeh-Hummer)
dipoles    -- dipole orientation, c_L/c_T pair correlations, C1/C2 reorientation, dielectric constant
symmetry   -- i-PI .out parsing, ΔV statistics, energy drift, angular momentum and torque
blocks     -- block averaging;  output -- tables, PNG, summary.json;  cli -- the command line
"""
