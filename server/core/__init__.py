"""The evaluation core: structures → neighbour graphs → model calls → energies, forces, virials.

``evaluator`` (batched evaluation), ``averaging`` (rotation grids), ``graph`` (validated
structures and their neighbour lists), ``neighbors`` (vesin), ``errors`` (one-line errors).
"""
