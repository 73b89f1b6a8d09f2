"""A PET-like unconstrained model under the project's model contract.

PET (Pozdnyakov & Ceriotti, 2023) as used in Langer, Pozdnyakov & Ceriotti (2024):
for every atom i a transformer runs over one token per neighbour j (plus a central
token); the tokens are built from the *raw Cartesian* edge vector, so the model is not
rotation-invariant by construction (it learns approximate invariance from rotated
training data).

One message-passing (MP) layer l:

* edge token t_ij = MLP_l([x, y, z, |r|], Z_j, Z_i (, m_ij)) = W σ(A·(r_ij, |r_ij|)/ℓ +
  e_l(Z_j) + e'_l(Z_i) (+ B m_ij)) + b: a two-layer SiLU MLP of the concatenated inputs,
  with the raw edge vector r_ij (Å) divided by ``length_scale`` ℓ (Å), species
  embeddings of the neighbour and the centre, and, in layers l ≥ 2, the message m_ij
  of edge i→j (below);
* central token c_i = emb_l(Z_i);
* ``n_transformer_layers`` post-LayerNorm transformer layers over [c_i, t_i1 … t_iM]
  with explicit attention whose weights are multiplied by each neighbour's cutoff
  value f_c(r_ij) (1 for the central token) and renormalised, so that a neighbour
  entering or leaving the cutoff sphere enters or leaves smoothly;
* outputs: central token → per-atom energy head; every edge token o_ij → bond energy
  head, weighted by f_c(r_ij);
* messages: m_ij ← ½ (m_ij + o_ji), the output token of the reversed edge j→i
  (m_ij of the first layer is its input token).

Energy E = Σ_i [s · Σ_l (ε_l(c_i) + ν Σ_j f_c(r_ij) b_l(o_ij)) + baseline(Z_i)] in eV,
where the scale s = ``energy_scale`` (eV), ν = ``bond_norm`` (1 / mean number of
neighbours) and the per-species ``baseline`` (eV) are buffers set from the training
set (:mod:`mlip_server.training.train`).

Cutoff function: f_c(r) = 1 below r_c − w, ½(1 + cos(π (r − r_c + w)/w)) in between, 0
from r_c on (``cutoff`` r_c and ``cutoff_width`` w in Å); its value and first
derivative vanish at r_c, so energies and forces are continuous when atoms cross it.

Implementation notes:

* The reverse edge of every edge is found inside ``forward`` (see
  :func:`reverse_edges`); the server's list is symmetric (ARCHITECTURE.md, "the model contract").
* Neighbour tokens live in a padded [N_atoms, 1 + max_neighbours, d] layout built by
  sorting edges by centre atom; padding slots get attention weight 0.
* Attention is written out (softmax of QKᵀ with masking), not
  ``scaled_dot_product_attention``: force training needs double backward, which that
  kernel lacks on CPU.
"""

import math
from typing import Dict, List, Tuple

import torch
from torch import nn

__all__ = [
    "PET",
    "build",
    "count_parameters",
    "to_torchscript",
    "cutoff_function",
    "reverse_edges",
    "padded_layout",
    "Attention",
    "TransformerLayer",
    "MessagePassingLayer",
]


def cutoff_function(r: torch.Tensor, cutoff: float, width: float) -> torch.Tensor:
    """Smooth switching f_c(r) ∈ [0, 1] (r, cutoff, width in Å); C¹ at ``cutoff``."""
    x = ((r - (cutoff - width)) / width).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * x))


def reverse_edges(edge_index: torch.Tensor, edge_vectors: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """Index of the reverse edge j→i (vector −r) of every edge i→j (vector r).

    Sorting edges by the key (i, j, r·u) and, separately, by (j, i, −r·u) for a fixed
    generic direction u puts every edge and its reverse at the same rank: the reverse
    of an edge has exactly the second key of the edge. Several periodic images of one
    pair (i, j) differ by lattice vectors and hence (generically) in r·u. The server
    builds −r by exact negation, so the two keys agree bit for bit. Two stable sorts per
    ordering give the lexicographic order; O(E log E), no Python loop.

    Returns int64 [E], ``rev[e]`` = the reverse edge of ``e``.
    """
    v = edge_vectors.detach().to(torch.float64)
    # a direction with rationally independent components: no small lattice vector is normal to it
    u = torch.tensor([0.8134598211, 0.4690138792, 0.3439287153], dtype=torch.float64, device=v.device)
    s = v @ u
    i, j = edge_index[0], edge_index[1]
    key_fwd = i * n_atoms + j
    key_bwd = j * n_atoms + i
    order_s = torch.argsort(s, stable=True)
    fwd = order_s[torch.argsort(key_fwd[order_s], stable=True)]
    order_ms = torch.argsort(-s, stable=True)
    bwd = order_ms[torch.argsort(key_bwd[order_ms], stable=True)]
    rev = torch.empty_like(fwd)
    rev[bwd] = fwd
    return rev


def padded_layout(centres: torch.Tensor, n_atoms: int) -> Tuple[torch.Tensor, int]:
    """Where each edge sits in the padded [N, M] neighbour layout (vectorised).

    Returns ``(pos, M)``: int64 [E] flat index centre·M + slot, and M = max(1, largest
    number of neighbours of an atom).
    """
    n_edges = centres.shape[0]
    counts = torch.bincount(centres, minlength=n_atoms)
    # no branch on the data (torch.export / AOTInductor): clamp instead of max(..., 1); with
    # no edge every count is 0 and M = 1 as before
    if torch.jit.is_scripting():
        max_neighbours = int(counts.max().clamp(min=1))
    else:  # eager, or traced for export (mlip-compile): M is data-dependent and ≥ 1
        max_neighbours = counts.max().clamp(min=1).item()
        torch.ops.aten.sym_constrain_range_for_size.default(max_neighbours, min=1)
    order = torch.argsort(centres, stable=True)
    first = torch.cumsum(counts, 0) - counts  # index of each atom's first edge in `order`
    slot_sorted = torch.arange(n_edges, device=centres.device) - first[centres[order]]
    slot = torch.empty_like(slot_sorted)
    slot[order] = slot_sorted
    return centres * max_neighbours + slot, max_neighbours


class Attention(nn.Module):
    """Multi-head self-attention with cutoff-weighted, renormalised attention weights."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """x [A, L, d]; weights [A, L] (f_c, 1 for the central token, 0 for padding);
        padding [A, L] bool (True for empty slots)."""
        a, length, d = x.shape
        h = self.n_heads
        # [A, L, 3d] -> three [A, H, L, dh] views (split's backward is one cat, no zero fills)
        q, k, v = self.qkv(x).view(a, length, 3 * h, self.d_head).transpose(1, 2).split(h, dim=1)
        scores = torch.matmul(q * (1.0 / math.sqrt(self.d_head)), k.transpose(-1, -2))
        # stabilising shift over the real keys only (a constant per row: no gradient needed)
        shift = scores.detach().masked_fill(padding[:, None, None, :], -1e30).amax(dim=-1, keepdim=True)
        p = torch.exp(scores - shift) * weights[:, None, None, :]
        # normalise after the product with V: [A, H, L, dh] is smaller than [A, H, L, L]
        y = torch.matmul(p, v) / p.sum(dim=-1, keepdim=True)
        y = y.transpose(1, 2).reshape(a, length, d)
        return self.out(y)


class TransformerLayer(nn.Module):
    """Post-LayerNorm transformer layer: x = LN(x + Att(x)); x = LN(x + FFN(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ffn: int):
        super().__init__()
        self.attention = Attention(d_model, n_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_ffn), nn.SiLU(), nn.Linear(d_ffn, d_model))
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x, weights, padding))
        return self.norm2(x + self.ffn(x))


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class MessagePassingLayer(nn.Module):
    """One PET layer: token construction, transformer, atom and bond energy heads."""

    has_message: bool

    def __init__(
        self,
        n_species: int,
        d_model: int,
        n_heads: int,
        d_ffn: int,
        n_transformer_layers: int,
        has_message: bool,
    ):
        super().__init__()
        self.has_message = has_message
        # the first layer of the token MLP, split by input: Linear([g, e_j, e_i, m]) is a sum
        self.geometry = nn.Linear(4, d_model)
        self.neighbour_embedding = nn.Embedding(n_species, d_model)
        self.centre_embedding = nn.Embedding(n_species, d_model)
        self.message_in = nn.Linear(d_model, d_model, bias=False) if has_message else nn.Identity()
        self.compress = nn.Sequential(nn.SiLU(), nn.Linear(d_model, d_model))
        self.central_embedding = nn.Embedding(n_species, d_model)
        self.transformer = nn.ModuleList(
            [TransformerLayer(d_model, n_heads, d_ffn) for _ in range(n_transformer_layers)]
        )
        self.atom_head = _mlp(d_model, d_model, 1)
        self.bond_head = _mlp(d_model, d_model, 1)
        for head in (self.atom_head, self.bond_head):  # start from E = baseline, F = 0
            nn.init.zeros_(head[2].weight)
            nn.init.zeros_(head[2].bias)

    def forward(
        self,
        geometry: torch.Tensor,
        kind: torch.Tensor,
        centres: torch.Tensor,
        neighbours: torch.Tensor,
        message: torch.Tensor,
        fc: torch.Tensor,
        pos: torch.Tensor,
        max_neighbours: int,
        weights: torch.Tensor,
        padding: torch.Tensor,
        bond_norm: torch.Tensor,
    ):
        """Returns (input edge tokens [E, d], output edge tokens [E, d], atom energies [N])."""
        n_atoms = kind.shape[0]
        h = (
            self.geometry(geometry)
            + self.neighbour_embedding(kind[neighbours])
            + self.centre_embedding(kind[centres])
        )
        if self.has_message:
            h = h + self.message_in(message)
        tokens = self.compress(h)  # [E, d]
        d = tokens.shape[1]
        padded = tokens.new_zeros((n_atoms * max_neighbours, d)).index_copy(0, pos, tokens)
        x = torch.cat(
            [self.central_embedding(kind).unsqueeze(1), padded.view(n_atoms, max_neighbours, d)], dim=1
        )
        for layer in self.transformer:
            x = layer(x, weights, padding)
        out_edges = x[:, 1:, :].reshape(n_atoms * max_neighbours, d).index_select(0, pos)
        energy = self.atom_head(x[:, 0, :]).squeeze(1)
        bond = self.bond_head(out_edges).squeeze(1) * (fc * bond_norm)
        energy = energy.index_add(0, centres, bond)
        return tokens, out_edges, energy


class PET(nn.Module):
    """PET-like model; ``forward`` follows the project's model contract.

    Parameters
    ----------
    species
        atomic numbers the model supports.
    cutoff
        cutoff radius r_c, Å.
    cutoff_width
        width w of the cosine switching region, Å.
    d_model
        token size; n_heads: attention heads; d_ffn: feed-forward size.
    n_layers
        message-passing layers; n_transformer_layers: transformer layers in each.
    length_scale
        Å, the edge vector and its length are divided by it on input.
    """

    cutoff: float
    species: List[int]
    interaction_range: float

    def __init__(
        self,
        species: List[int] = [1, 8],
        cutoff: float = 4.0,
        cutoff_width: float = 0.3,
        d_model: int = 64,
        n_heads: int = 4,
        d_ffn: int = 128,
        n_layers: int = 2,
        n_transformer_layers: int = 1,
        length_scale: float = 0.5,
    ):
        super().__init__()
        if not 0 < cutoff_width <= cutoff:
            raise ValueError(f"cutoff_width={cutoff_width} must be in (0, cutoff={cutoff}]")
        self.cutoff = float(cutoff)
        self.interaction_range = float(cutoff) * n_layers  # messages travel one cutoff per layer
        self.cutoff_width = float(cutoff_width)
        self.species = [int(z) for z in species]
        self.length_scale = float(length_scale)
        lookup = torch.full((max(self.species) + 1,), -1, dtype=torch.int64)
        for n, z in enumerate(self.species):
            lookup[z] = n
        self.register_buffer("lookup", lookup)
        self.register_buffer("baseline", torch.zeros(len(self.species)))  # eV per atom of each species
        self.register_buffer("energy_scale", torch.ones(()))  # eV
        # 1 / (mean number of neighbours): keeps the sum of bond energies O(1) per atom
        self.register_buffer("bond_norm", torch.ones(()))
        self.layers = nn.ModuleList(
            [
                MessagePassingLayer(len(self.species), d_model, n_heads, d_ffn, n_transformer_layers, n > 0)
                for n in range(n_layers)
            ]
        )

    def forward(
        self,
        edge_vectors: torch.Tensor,
        edge_index: torch.Tensor,
        numbers: torch.Tensor,
        structure_index: torch.Tensor,
        n_structures: int,
    ) -> torch.Tensor:
        """Total energies [n_structures], eV (see the module docstring)."""
        atomic = self.atomic_energies(edge_vectors, edge_index, numbers, True)
        out = torch.zeros(n_structures, dtype=atomic.dtype, device=atomic.device)
        return out.index_add(0, structure_index, atomic)

    @torch.jit.export
    def atomic_energies(
        self, edge_vectors: torch.Tensor, edge_index: torch.Tensor, numbers: torch.Tensor, with_baseline: bool
    ) -> torch.Tensor:
        """Per-atom energies [N], eV; without the composition baseline if ``with_baseline``
        is False (training compares these with baseline-subtracted labels)."""
        energy, _, kind = self.backbone(edge_vectors, edge_index, numbers)
        energy = energy * self.energy_scale
        if with_baseline:
            energy = energy + self.baseline[kind]
        return energy

    @torch.jit.export
    def backbone(
        self, edge_vectors: torch.Tensor, edge_index: torch.Tensor, numbers: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The message-passing layers: (per-atom energies [N] before ``energy_scale`` and the
        baseline, the last layer's output edge tokens [E, d], species indices [N]). Heads on
        top of the energy (the direct-force head, :mod:`mlip_server.training.direct_head`) read the tokens."""
        n_atoms = numbers.shape[0]
        kind = self.lookup[numbers]
        centres, neighbours = edge_index[0], edge_index[1]
        r = torch.sqrt((edge_vectors * edge_vectors).sum(dim=1))
        fc = cutoff_function(r, self.cutoff, self.cutoff_width)
        geometry = torch.cat([edge_vectors, r.unsqueeze(1)], dim=1) * (1.0 / self.length_scale)
        pos, m = padded_layout(centres, n_atoms)
        weights = fc.new_zeros(n_atoms * m).index_copy(0, pos, fc).view(n_atoms, m)
        weights = torch.cat([torch.ones_like(weights[:, :1]), weights], dim=1)
        filled = torch.zeros(n_atoms * m, dtype=torch.bool, device=fc.device)
        filled = filled.index_fill(0, pos, True).view(n_atoms, m)
        padding = torch.cat([torch.zeros_like(filled[:, :1]), ~filled], dim=1)
        rev = reverse_edges(edge_index, edge_vectors, n_atoms)
        # the contract's symmetric list; a broken one fails loudly (an assertion op, not a
        # Python branch on the data, so that the model exports: torch.export / AOTInductor)
        detached = edge_vectors.detach()
        symmetric = (centres[rev] == neighbours).all() & ~((detached + detached[rev]).abs() > 1e-4).any()
        torch._assert_async(
            symmetric,
            "PET needs a symmetric neighbour list: every edge i->j with vector r must have one "
            "edge j->i with vector -r",
        )

        energy = torch.zeros(n_atoms, dtype=edge_vectors.dtype, device=edge_vectors.device)
        message = torch.zeros(0, dtype=edge_vectors.dtype, device=edge_vectors.device)
        out_edges = message
        for layer in self.layers:
            tokens, out_edges, e_layer = layer(
                geometry, kind, centres, neighbours, message, fc, pos, m, weights, padding, self.bond_norm
            )
            energy = energy + e_layer
            prev = message if layer.has_message else tokens
            message = 0.5 * (prev + out_edges.index_select(0, rev))
        return energy, out_edges, kind


def build(config: Dict) -> PET:
    """A :class:`PET` from a dict of the constructor's keyword arguments (YAML ``model:``)."""
    allowed = {
        "species",
        "cutoff",
        "cutoff_width",
        "d_model",
        "n_heads",
        "d_ffn",
        "n_layers",
        "n_transformer_layers",
        "length_scale",
    }
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}: allowed are {sorted(allowed)}")
    return PET(**config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_torchscript(model: PET) -> torch.jit.ScriptModule:
    """A scripted CPU float32 copy of ``model`` for inference under the contract.

    Its parameters do not require gradients: the server differentiates only with
    respect to the edge vectors, and TorchScript's autodiff would otherwise also
    compute every weight gradient (about 1.5× slower energy+forces).
    """
    import copy

    clone = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return torch.jit.script(clone)
