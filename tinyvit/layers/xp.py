"""The array namespace of a layer's inputs: NumPy, or jax.numpy for JAX arrays.

The specification is written once, against `xp = namespace(x)`, so the same
lines run eagerly on NumPy arrays and are traced and compiled by XLA under the
`jax` backend. Only what differs between the two lives here; JAX is imported
only when a JAX array is seen.
"""

import numpy as np


def namespace(*arrays):
    """jax.numpy if any argument is a JAX array (or a JAX tracer), else numpy."""
    for a in arrays:
        if type(a).__module__.startswith(("jax", "jaxlib")):
            import jax.numpy as jnp

            return jnp
    return np


def erfc(x):
    """The complementary error function of scipy (NumPy arrays) or jax.scipy (JAX arrays)."""
    if namespace(x) is np:
        from scipy.special import erfc as _erfc
    else:
        from jax.scipy.special import erfc as _erfc
    return _erfc(x)


def accumulator_dtype(xp):
    """float64 where the namespace has it (NumPy; JAX with x64 enabled), else float32."""
    if xp is np:
        return np.float64
    import jax

    return xp.float64 if jax.config.jax_enable_x64 else xp.float32
