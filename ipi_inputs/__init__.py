"""The shipped i-PI experiments (package data of ``mlip_server``): one folder each, holding
``input.xml`` (an i-PI input template), ``experiment.json`` (its defaults) and ``README.md``;
``structures/`` holds the shipped starting frames. Found through :mod:`mlip_server.paths`."""
