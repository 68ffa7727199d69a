"""PaiNN: equivariant message passing with scalar and vector features.

Schütt, Unke, Gastegger, "Equivariant message passing for the prediction of tensorial
properties and molecular spectra", ICML 2021. Vector features ``v`` ([n_node, 3, F])
only ever meet rotation-equivariant operations (scaling by invariants, linear maps over
the feature axis, dot products), so energies are exactly invariant and forces exactly
equivariant.
"""

from __future__ import annotations

from collections.abc import Sequence

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
from jaxdistill.models.repulsion import zbl_atomic_energies


class PaiNNMessage(nn.Module):
    """Messages from neighbours j to centres i (invariant filter times features)."""

    features: int

    @nn.compact
    def __call__(self, s, v, radial, envelope, unit_vectors, senders, receivers):
        n_node = s.shape[0]
        phi = nn.Dense(3 * self.features)(nn.silu(nn.Dense(self.features)(s)))
        # The envelope multiplies after the dense layer so that its bias, too, goes
        # smoothly to zero at the cutoff (and is exactly zero on padding edges).
        filters = nn.Dense(3 * self.features)(radial) * envelope[:, None]
        x = phi[senders] * filters
        gate_v, gate_s, gate_r = jnp.split(x, 3, axis=-1)
        ds = jax.ops.segment_sum(gate_s, receivers, num_segments=n_node)
        dv_edge = v[senders] * gate_v[:, None, :] + unit_vectors[:, :, None] * gate_r[:, None, :]
        dv = jax.ops.segment_sum(dv_edge, receivers, num_segments=n_node)
        return s + ds, v + dv


class PaiNNUpdate(nn.Module):
    """Per-atom mixing of scalar and vector channels."""

    features: int

    @nn.compact
    def __call__(self, s, v):
        u_v = nn.Dense(self.features, use_bias=False)(v)
        w_v = nn.Dense(self.features, use_bias=False)(v)
        # sqrt(x + eps): vector features start at exactly zero, where a plain norm has
        # an infinite gradient.
        w_norm = jnp.sqrt(jnp.sum(w_v**2, axis=1) + 1e-8)
        a = nn.Dense(3 * self.features)(
            nn.silu(nn.Dense(self.features)(jnp.concatenate([s, w_norm], axis=-1)))
        )
        a_vv, a_sv, a_ss = jnp.split(a, 3, axis=-1)
        dv = a_vv[:, None, :] * u_v
        ds = a_sv * jnp.sum(u_v * w_v, axis=1) + a_ss
        return s + ds, v + dv


class PaiNN(nn.Module):
    """Equivariant student (the accurate default).

    Attributes:
        species: atomic numbers the student knows.
        cutoff: radial cutoff, Å.
        features: channels of scalar and vector features.
        num_layers: message-passing layers.
        num_radial: Bessel functions in the radial basis.
        repulsion: "zbl" adds the ZBL screened nuclear repulsion for compressed
            pairs (see ``jaxdistill.models.repulsion``); None for none.
    """

    species: Sequence[int]
    cutoff: float
    features: int = 64
    num_layers: int = 3
    num_radial: int = 16
    repulsion: str | None = None

    @nn.compact
    def __call__(self, numbers, edge_vectors, senders, receivers, node_mask, edge_mask):
        """Per-atom energies ``[n_node]`` (eV) from atomic numbers and edge vectors (Å)."""
        species_index = jnp.asarray(species_index_table(self.species))[numbers]
        distances = safe_norm(edge_vectors, edge_mask)
        unit_vectors = edge_vectors / distances[:, None]
        envelope = polynomial_envelope(distances, self.cutoff) * edge_mask
        radial = bessel_basis(distances, self.cutoff, self.num_radial)

        s = nn.Embed(len(self.species), self.features, name="embedding")(species_index)
        v = jnp.zeros((s.shape[0], 3, self.features), dtype=s.dtype)
        for layer in range(self.num_layers):
            s, v = PaiNNMessage(self.features, name=f"message_{layer}")(
                s, v, radial, envelope, unit_vectors, senders, receivers
            )
            s, v = PaiNNUpdate(self.features, name=f"update_{layer}")(s, v)
        energies = AtomicEnergyHead(len(self.species), self.features // 2, name="head")(
            s, species_index
        )
        if self.repulsion == "zbl":
            energies = energies + zbl_atomic_energies(
                numbers, edge_vectors, senders, receivers, edge_mask, self.species
            )
        return energies * node_mask
