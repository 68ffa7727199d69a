"""Molecular dynamics with students: ASE calculator and jax-md adapter."""
