"""What every student shares: its settings, edge geometry and energy read-out.

A student subclasses :class:`StudentModule`, turns the :class:`EdgeGeometry` of
:func:`edge_geometry` into per-atom features, and hands them to :meth:`StudentModule.readout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdistill.models.common import (
    AtomicEnergyHead,
    bessel_basis,
    polynomial_envelope,
    safe_norm,
    species_index_table,
)
from jaxdistill.models.edges import Edges, ReceiverMajor
from jaxdistill.models.fused import (
    FusedEdges,
    SlotEdges,
    edge_layouts,
    slot_edges,
    slot_kernels_chosen,
    use_fused,
)
from jaxdistill.models.repulsion import zbl_atomic_energies


class EdgeGeometry(NamedTuple):
    """Invariant edge quantities every student starts from.

    Attributes:
        species_index: ``[n_node]`` int, each atom's index in the student's species.
        distances: ``[n_edge]`` Å (1 on padding edges).
        envelope: ``[n_edge]`` smooth cutoff, 0 on padding edges.
        radial: ``[n_edge, num_radial]`` Bessel basis.
    """

    species_index: jax.Array
    distances: jax.Array
    envelope: jax.Array
    radial: jax.Array


def edge_geometry(
    numbers: jax.Array,
    edge_vectors: jax.Array,
    edge_mask: jax.Array,
    species: Sequence[int],
    cutoff: float,
    num_radial: int,
) -> EdgeGeometry:
    """Species indices, edge lengths, cutoff envelope and radial basis of a graph."""
    distances = safe_norm(edge_vectors, edge_mask)
    return EdgeGeometry(
        species_index=jnp.asarray(species_index_table(species))[numbers],
        distances=distances,
        envelope=polynomial_envelope(distances, cutoff) * edge_mask,
        radial=bessel_basis(distances, cutoff, num_radial),
    )


class StudentModule(nn.Module):
    """Settings shared by the students (each architecture adds its layers).

    Attributes:
        species: atomic numbers the student knows.
        cutoff: radial cutoff, Å.
        features: feature channels.
        num_layers: message-passing layers.
        num_radial: Bessel functions in the radial basis.
        repulsion: "zbl" adds the ZBL screened nuclear repulsion for compressed
            pairs (see ``jaxdistill.models.repulsion``); None for none.
        message_passing: how the message-passing layers are evaluated, with the same
            parameters either way: "reference" (pure JAX, the default of a bare
            module: training and any derivative order), "fused" (the Pallas kernels
            of ``jaxdistill.models.fused``: energies, forces and stress without
            per-edge arrays) or "auto" (fused on a GPU in float32 for graphs of at
            least ``fused.AUTO_MIN_NODES`` nodes, except on a receiver-major edge
            layout where :meth:`fused_wins_on_receiver_major` says no; else reference;
            the environment variable ``JAXDISTILL_MESSAGE_PASSING`` overrides it).
            A :class:`~jaxdistill.student.Student` builds its module with its own
            ``message_passing`` ("auto" unless set).
    """

    species: Sequence[int]
    cutoff: float
    features: int = 64
    num_layers: int = 3
    num_radial: int = 16
    repulsion: str | None = None
    message_passing: str = "reference"

    def edges_and_geometry(
        self,
        numbers: jax.Array,
        edge_vectors: jax.Array,
        senders: jax.Array,
        receivers: jax.Array,
        edge_mask: jax.Array,
        layout: ReceiverMajor | None,
    ) -> tuple[Edges, EdgeGeometry, FusedEdges | SlotEdges | None]:
        """What an architecture's ``__call__`` starts from: the :class:`Edges` (with the
        receiver-major ``layout``, or None for any edge order), the invariant
        :class:`EdgeGeometry`, and the fused kernels' layouts where they run (else None).
        """
        edges = Edges(senders, receivers, layout)
        geometry = edge_geometry(
            numbers, edge_vectors, edge_mask, self.species, self.cutoff, self.num_radial
        )
        fused = self.fused_edges(edge_vectors, edge_mask, edges, numbers.shape[0])
        return edges, geometry, fused

    def fused_wins_on_receiver_major(self) -> bool:
        """Whether ``"auto"`` should pick the fused kernels over the receiver-major
        reference path for large graphs (measured per architecture; False here)."""
        return False

    def fused_edges(
        self,
        edge_vectors: jax.Array,
        edge_mask: jax.Array,
        edges: Edges,
        n_node: int,
    ) -> FusedEdges | SlotEdges | None:
        """Edge layouts for the fused kernels, or None where the reference path runs.

        Decided at trace time from ``message_passing``, the backend, the dtype, the
        sizes and the edge layout (see :func:`jaxdistill.models.fused.use_fused`).
        """
        if not use_fused(
            self.message_passing,
            edge_vectors.dtype,
            self.features,
            self.num_radial,
            n_node,
            receiver_major=edges.layout is not None,
            wins_on_receiver_major=self.fused_wins_on_receiver_major(),
        ):
            return None
        if edges.layout is not None and slot_kernels_chosen():
            return slot_edges(
                edges.senders, edges.layout.reverse, edges.layout.reverse_mask, edge_mask
            )
        return edge_layouts(
            edge_vectors, edge_mask, edges.senders, edges.receivers, n_node, self.cutoff
        )

    def readout(
        self,
        features: jax.Array,
        geometry: EdgeGeometry,
        numbers: jax.Array,
        edge_vectors: jax.Array,
        edges: Edges,
        node_mask: jax.Array,
        edge_mask: jax.Array,
    ) -> jax.Array:
        """Per-atom energies ``[n_node]`` (eV) from final scalar features ``[n_node, F]``.

        Called from the architecture's compact ``__call__``, so the head's parameters
        sit under ``head`` in that module.
        """
        energies = AtomicEnergyHead(len(self.species), self.features // 2, name="head")(
            features, geometry.species_index
        )
        if self.repulsion == "zbl":
            energies = energies + zbl_atomic_energies(
                numbers, edge_vectors, edges, edge_mask, self.species
            )
        return energies * node_mask
