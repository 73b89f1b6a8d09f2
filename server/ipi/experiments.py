"""i-PI experiments: the folders of ``ipi_inputs/`` rendered into a run folder.

Each experiment is a folder ``ipi_inputs/NAME`` with ``input.xml`` (a ``string.Template``
with ``$steps``, ``$temperature``, ``$forcefield_<endpoint>``, ...), ``experiment.json``
(defaults, structure kind, endpoints and their averaging specs) and a README. Rendering writes
the starting structure and returns the XML and what the server needs; the forcefield elements
(unix or inet sockets) are written here, the one place that knows i-PI's socket syntax.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from ..core.averaging import DIRECT, Averaging
from ..core.errors import InputError
from ..paths import experiments_dir, shipped_model
from ..structures import water_box, water_molecule, write_ipi_xyz

__all__ = [
    "RunOptions",
    "Rendered",
    "experiments",
    "load_experiment",
    "render",
    "render_resume",
    "check_options",
    "forcefield",
]

TRANSPORTS = ("unix", "shm", "inet", "ffdirect")
"""Between i-PI and the model: ``<ffsocket>`` modes (unix sockets, unix sockets with the arrays in
shared memory, TCP) and ``<ffdirect>`` (the model inside i-PI's process)."""
TEMPLATE_KEYS = ("steps", "temperature", "timestep", "beads", "nmts", "pressure", "stride", "seed")
"""Run options that are also template values of ``input.xml``."""
_TOTAL_STEPS = re.compile(r"<total_steps>\s*\d+\s*</total_steps>")


@dataclass
class RunOptions:
    """Everything a run of an experiment can be given (the keywords of ``run_experiment``).

    Units: ``temperature`` K, ``pressure`` bar, ``timestep`` fs (the outer step for MTS
    experiments), ``density`` g/cm³; ``steps`` and ``stride`` in (outer) steps.
    """

    model: str | None = None
    committee: list | None = None
    """Two or more model files served as a committee (``mlip-server --committee``), not with ``model``."""
    structure: str | None = None
    trajectory: str | None = None
    molecules: int | None = None
    density: float = 0.997
    steps: int | None = None
    temperature: float | None = None
    pressure: float | None = None
    timestep: float | None = None
    nmts: int | None = None
    beads: int | None = None
    stride: int | None = None
    average: str = "none"
    forces: str = "conservative"
    """``direct``: the endpoint of a one-endpoint experiment serves the model's direct forces."""
    specs: str | None = None
    seed: int = 12345
    device: str | None = None
    """cpu, cuda or cuda:N (None: cpu, or for ``resume`` the device the run was started with)."""
    dtype: str | None = None
    """Server precision; None: the model's own."""
    template: dict = field(default_factory=dict)
    """Any other template value (``--set NAME=VALUE``)."""
    resume: str | None = None
    """A run folder to continue in place, from its latest checkpoint, until its total steps."""
    walltime: str | None = None
    """HH:MM:SS the run may take (None: the SLURM job's end time, if any): it stops cleanly,
    ``walltime_margin`` s before."""
    walltime_margin: float | None = None
    """Seconds before the walltime when the stop begins (None: 10 % of it, 20-300 s)."""
    servers: int = 1
    """Force servers sharing the connections (one per GPU); connection k on server k mod S."""
    max_server_restarts: int = 3
    """Restarts of a server that died or hung, per launch (0: the run fails at once)."""
    max_ipi_restarts: int = 2
    """Restarts of i-PI killed by a signal (the OOM killer's SIGKILL), per launch, each from the run's
    latest readable checkpoint in place (0: the run fails at once, resumable by hand)."""
    stall_timeout: float | None = None
    """Seconds without an evaluation after which a server counts as hung (None: 10 x the longest
    gap seen, at least 120 s; a new server has 600 s for its first). Also i-PI's socket
    ``<timeout>``."""
    out: str | None = None
    progress: float = 10.0
    """Seconds between progress lines (0: quiet)."""
    threads: int | None = None
    """OpenMP threads of i-PI and the server (None: inherited)."""
    transport: str = "unix"
    """``unix`` (one socket file per endpoint), ``shm`` (the same sockets, positions and forces in
    i-PI's shared memory: i-PI and the server on one machine), ``inet`` (``host``, ``port``,
    ``port``+1, ...) or ``ffdirect`` (the model inside i-PI: no server, no sockets)."""
    latency: float = 1e-4
    """i-PI's ``<latency>`` of socket forcefields, s: how long its polling loop sleeps."""
    host: str = "127.0.0.1"
    port: int | None = None
    side: str = "both"
    """``both``; ``ipi`` (i-PI only: another machine runs the server); ``server`` (the server only,
    for the run folder that the ``ipi`` side made)."""


@dataclass
class Rendered:
    """A rendered experiment: the i-PI input and what the server side needs."""

    xml: str
    xml_name: str
    endpoints: dict
    """Endpoint (forcefield name) → averaging spec."""
    addresses: list
    """Server addresses, ``unix:NAME=SPEC`` or ``inet:HOST:PORT=SPEC``, one per connection."""
    sockets: list
    """Unix socket names i-PI creates (to wait for, and to remove)."""
    server_args: list
    element_file: str
    """The file in the run folder that gives the server the elements."""


def experiments() -> list[str]:
    """Names of the shipped experiments."""
    return sorted(p.name for p in experiments_dir().iterdir() if (p / "experiment.json").exists())


def load_experiment(name: str) -> tuple[dict, str]:
    """(experiment.json, input.xml template) of experiment ``name``."""
    folder = experiments_dir() / name
    if not (folder / "experiment.json").exists():
        raise InputError(f"unknown experiment {name!r}: choose one of {', '.join(experiments())}")
    return json.loads((folder / "experiment.json").read_text()), (folder / "input.xml").read_text()


def forcefield(
    name: str,
    address: str,
    options: RunOptions,
    port: int | None,
    spec: str = "none",
    element_file: str = "init.xyz",
    server_args=(),
) -> str:
    """The forcefield element of endpoint ``name`` with averaging ``spec``.

    ``<ffsocket>`` on the unix socket ``address`` (also for shm, whose messages travel on it) or
    on inet ``options.host``:``port``; with ``options.transport == "ffdirect"`` an ``<ffdirect>``
    that evaluates the model inside i-PI (:mod:`mlip_server.ipi.pes`), no server process.
    """
    if options.transport == "ffdirect":
        from . import pes

        model = Path(options.model or shipped_model()).resolve()
        params = [
            f"model: {model}",
            f"structure: {element_file}",
            f"average: {spec}",
            f"device: {options.device}",
        ]
        params += [f"dtype: {options.dtype}"] if options.dtype else []
        params += ["nonperiodic: true"] if "--nonperiodic" in server_args else []
        return (
            f"<ffdirect name='{name}' pbc='false'><pes>custom</pes><pes_path>{Path(pes.__file__).resolve()}"
            f"</pes_path><parameters>{{{', '.join(params)}}}</parameters></ffdirect>"
        )
    if options.transport == "inet":
        where = f"<address>{options.host}</address><port>{port}</port>"
    else:
        where = f"<address>{address}</address>"
    timeout = f"<timeout>{options.stall_timeout:g}</timeout>" if options.stall_timeout else ""
    return (
        f"<ffsocket name='{name}' mode='{options.transport}' pbc='false'>{where}"
        f"<latency>{options.latency:g}</latency>{timeout}</ffsocket>"
    )


def _starting_structure(meta, options: RunOptions, out: Path) -> str:
    """Writes init.xyz (or the replay files) into ``out``; returns the element source file."""
    kind = meta["structure"]["kind"]
    if options.structure:
        import ase.io

        if not Path(options.structure).is_file():
            raise InputError(f"structure file {options.structure!r} not found")
        atoms = ase.io.read(options.structure, index=0)
        if not atoms.cell.any():
            raise InputError(f"{options.structure} has no cell: give a periodic structure (or --molecules)")
    elif kind == "water_box":
        atoms = water_box(
            options.molecules or meta["structure"]["molecules"], density=options.density, seed=options.seed
        )
    elif kind == "molecule":
        atoms = water_molecule(center=(50.0, 50.0, 50.0))
        atoms.cell, atoms.pbc = [100.0, 100.0, 100.0], True
    elif kind == "file":
        raise InputError("this experiment needs --structure FILE (e.g. an ice cell in extended XYZ)")
    elif kind == "trajectory":
        return _replay_files(options, out)
    else:  # pragma: no cover - guarded by the experiment files
        raise InputError(f"unknown structure kind {kind!r}")
    write_ipi_xyz(atoms, out / "init.xyz")
    return "init.xyz"


def _replay_files(options: RunOptions, out: Path) -> str:
    import ase.io

    if not options.trajectory or not Path(options.trajectory).is_file():
        raise InputError("replay needs --trajectory FILE (any ASE-readable trajectory with the cell)")
    frames = ase.io.read(options.trajectory, index=":")
    if not frames[0].cell.any():
        raise InputError(
            f"{options.trajectory} carries no cell: replay needs a format with the cell (extxyz, ...)"
        )
    for a in frames:
        a.info.clear()
    ase.io.write(out / "trajectory.extxyz", frames, format="extxyz")
    ase.io.write(out / "init.extxyz", frames[0], format="extxyz")
    # i-PI evaluates the initial structure (frame 0) at step 0 and frame k-1 at step k
    options.steps = len(frames) if options.steps is None else options.steps
    return "init.extxyz"


def _endpoints(meta, values, options: RunOptions) -> dict:
    if meta["endpoints"] == "specs":  # replay: one endpoint per averaging level
        specs = (options.specs or values["specs"]).split(",")
        return {f"ff{k}": spec.strip() for k, spec in enumerate(specs)}
    endpoints = {
        e: (options.average if spec == "$average" else spec) for e, spec in meta["endpoints"].items()
    }
    if options.average != "none" and "avg" in endpoints:
        endpoints["avg"] = options.average
    if options.forces == "direct" and len(endpoints) == 1:
        (name,) = endpoints
        endpoints[name] = direct_spec(endpoints[name])
    return endpoints


def direct_spec(spec: str) -> str:
    """``spec`` as direct forces: ``none`` → ``direct``, ``2i`` → ``direct+2i`` (unchanged if direct)."""
    averaging = Averaging(spec)
    if averaging.direct:
        return spec
    return DIRECT if averaging.is_raw else f"{DIRECT}+{spec}"


def needs_virial(template: str) -> bool:
    """Whether the experiment's i-PI input needs the pressure (a barostat)."""
    return "$pressure" in template or "<barostat" in template


def _connections(meta, xml: str, endpoints: dict, run_id: str, options: RunOptions) -> tuple[list, list]:
    """(server addresses, unix socket names) of the endpoints; beads get one connection each."""
    connections = 1
    if meta.get("connections") == "beads":
        connections = int(re.search(r"nbeads=['\"](\d+)['\"]", xml).group(1))
    addresses, sockets = [], []
    for k, (e, spec) in enumerate(endpoints.items()):
        n = connections if e in meta.get("bead_endpoints", ["raw"]) else 1
        if options.transport == "inet":
            addresses += [f"inet:{options.host}:{options.port + k}={spec}"] * n
        else:
            addresses += [f"{options.transport}:{run_id}-{e}={spec}"] * n
            sockets.append(f"{run_id}-{e}")
    return addresses, sockets


def render(name: str, options: RunOptions, out: Path, run_id: str) -> Rendered:
    """Writes the starting structure into ``out`` and renders ``input.xml``; writes no XML."""
    if options.transport not in TRANSPORTS:
        raise InputError(f"unknown transport {options.transport!r}: use one of {', '.join(TRANSPORTS)}")
    if options.transport == "inet" and not options.port:
        raise InputError("the inet transport needs --port (the first of one port per endpoint)")
    meta, template = load_experiment(name)
    element_file = _starting_structure(meta, options, out)
    values = {k: str(v) for k, v in meta["defaults"].items()}
    for key in TEMPLATE_KEYS:
        value = getattr(options, key, None)
        if value is not None:
            values[key] = str(value)
    values.update({k: str(v) for k, v in options.template.items()})
    endpoints = _endpoints(meta, values, options)
    for k, e in enumerate(endpoints):
        values[f"forcefield_{e}"] = forcefield(
            e,
            f"{run_id}-{e}",
            options,
            (options.port or 0) + k,
            endpoints[e],
            element_file,
            meta.get("server_args", []),
        )
    if meta["endpoints"] == "specs":
        values["forcefields"] = "\n".join(f"  {values[f'forcefield_{e}']}" for e in endpoints)
        values["forces"] = "\n".join(
            f"      <force forcefield='{e}' weight='{1 if k == 0 else 0}'/>" for k, e in enumerate(endpoints)
        )
        values["pot_columns"] = ", ".join(
            f"pot_component_raw({k}){{electronvolt}}" for k in range(len(endpoints))
        )
        template = string.Template(template).safe_substitute(values)
    try:
        xml = string.Template(template).substitute(values)
    except KeyError as err:
        raise InputError(
            f"experiment {name}: template needs a value for {err}: pass --set {err.args[0]}=VALUE"
        ) from None
    addresses, sockets = _connections(meta, xml, endpoints, run_id, options)
    if options.transport == "ffdirect":
        addresses, sockets = [], []
    args = _server_args(meta, template, endpoints)
    return Rendered(xml, "input.xml", endpoints, addresses, sockets, args, element_file)


def _server_args(meta, template: str, endpoints: dict) -> list:
    """The experiment's server arguments, plus ``--require-virial`` when it needs the pressure and
    an endpoint serves direct forces (the server refuses a model without a direct virial)."""
    args = list(meta.get("server_args", []))
    if needs_virial(template) and any(Averaging(spec).direct for spec in endpoints.values()):
        args.append("--require-virial")
    return args


def check_options(name: str, meta: dict, template: str, options: RunOptions) -> None:
    """Refuses an option that experiment ``name`` would silently ignore (``water-nvt --beads 32``
    would run classical MD), naming the experiments that have it.

    Raises
    ------
    InputError
        The first unused option.
    """
    kind = meta["structure"]["kind"]
    used = {key: f"${key}" in template or f"${{{key}}}" in template for key in TEMPLATE_KEYS}
    endpoints = meta["endpoints"]
    used["average"] = endpoints != "specs" and ("$average" in endpoints.values() or "avg" in endpoints)
    used["forces"] = endpoints != "specs" and len(endpoints) == 1
    used["specs"] = used["trajectory"] = kind == "trajectory"
    used["structure"] = kind in ("water_box", "molecule", "file")
    used["molecules"] = used["density"] = kind == "water_box" and not options.structure
    defaults = RunOptions()
    for key, is_used in used.items():
        value = getattr(options, key)
        if is_used or value is None or value == getattr(defaults, key):
            continue
        having = [e for e in experiments() if _uses(e, key)]
        flag = "--" + key.replace("_", "-")
        why = "its --structure gives the box" if key in ("molecules", "density") and options.structure else ""
        raise InputError(
            f"{name} does not use {flag}"
            + (f" ({why})" if why else "")
            + (f": experiments with it: {', '.join(having)}" if having and not why else "")
        )


def _uses(name: str, key: str) -> bool:
    meta, template = load_experiment(name)
    if key in TEMPLATE_KEYS:
        return f"${key}" in template
    if key == "forces":
        return meta["endpoints"] != "specs" and len(meta["endpoints"]) == 1
    if key == "average":
        return meta["endpoints"] != "specs" and (
            "$average" in meta["endpoints"].values() or "avg" in meta["endpoints"]
        )
    kind = meta["structure"]["kind"]
    return {
        "specs": kind == "trajectory",
        "trajectory": kind == "trajectory",
        "molecules": kind == "water_box",
        "density": kind == "water_box",
        "structure": kind in ("water_box", "molecule", "file"),
    }[key]


def render_resume(name: str, options: RunOptions, folder: Path, run_id: str, checkpoint: str) -> Rendered:
    """The i-PI input that continues run ``folder`` from the ``checkpoint`` text (an i-PI
    RESTART): fresh unix socket names, ``options.steps`` as the new total (counted from the
    start), i-PI's socket ``<timeout>`` from ``options.stall_timeout``; writes no XML."""
    meta = load_experiment(name)[0]
    text = checkpoint
    endpoints = json.loads((folder / "endpoints.json").read_text())
    if options.transport in ("unix", "shm"):
        for e in endpoints:
            text = re.sub(
                r"(<ffsocket[^>]*name=['\"]%s['\"][^>]*>.*?<address>)\s*[^<]*(</address>)" % re.escape(e),
                r"\g<1>%s-%s\g<2>" % (run_id, e),
                text,
                flags=re.S,
            )
    if options.transport == "inet":  # this launch's host and ports (a new job, another node)
        for k, e in enumerate(endpoints):
            text = re.sub(
                r"(<ffsocket[^>]*name=['\"]%s['\"][^>]*>)(.*?)(</ffsocket>)" % re.escape(e),
                lambda m, k=k: (
                    m.group(1)
                    + re.sub(
                        r"<port>[^<]*</port>",
                        f"<port>{options.port + k}</port>",
                        re.sub(r"<address>[^<]*</address>", f"<address>{options.host}</address>", m.group(2)),
                    )
                    + m.group(3)
                ),
                text,
                flags=re.S,
            )
    if options.stall_timeout:
        text = re.sub(r"\s*<timeout>[^<]*</timeout>", "", text)
        text = re.sub(r"(</address>)", r"\g<1><timeout>%g</timeout>" % options.stall_timeout, text)
    if options.steps is not None:  # extend (or shorten) the run: total steps counted from the start
        tag = f"<total_steps>{options.steps}</total_steps>"
        if _TOTAL_STEPS.search(text):
            text = _TOTAL_STEPS.sub(tag, text)
        else:  # i-PI leaves the tag out of a checkpoint when the run has its default (1000)
            text = re.sub(r"(<simulation\b[^>]*>)", lambda m: m.group(1) + "\n   " + tag, text, count=1)
    element_file = "init.xyz" if (folder / "init.xyz").exists() else "init.extxyz"
    addresses, sockets = _connections(meta, text, endpoints, run_id, options)
    if options.transport == "ffdirect":
        addresses, sockets = [], []
    args = _server_args(meta, load_experiment(name)[1], endpoints)
    return Rendered(text, "resume.xml", endpoints, addresses, sockets, args, element_file)
