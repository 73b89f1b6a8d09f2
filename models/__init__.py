"""The shipped models (package data of ``mlip_server``): ``water-pet.pt``, the default model of every
command, and the committee of ``committee/``. Found through :mod:`mlip_server.paths`."""
