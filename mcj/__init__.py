"""mcj: deep model compression in JAX/Flax."""
