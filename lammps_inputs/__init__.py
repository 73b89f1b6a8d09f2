"""The shipped LAMMPS decks (package data of ``mlip_server``): ``in.NAME`` files run by
``mlip-lammps-run NAME``. Found through :mod:`mlip_server.paths`."""
