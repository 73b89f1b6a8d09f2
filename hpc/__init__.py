"""The shipped SLURM templates (package data of ``mlip_server``): copy one out with
``mlip-run --copy-template hpc/NAME.slurm``, then edit the copy. Found through :mod:`mlip_server.paths`."""
