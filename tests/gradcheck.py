"""The gradient-check helpers live in tinyvit.gradcheck (the CLI `python -m tinyvit.gradcheck` uses
them too); the tests import them under this short name."""

from tinyvit.gradcheck import (  # noqa: F401
    FLOOR,
    STEP,
    TOLERANCE,
    GradcheckError,
    check_layer,
    directional_errors,
    numerical_grad,
    rel_error,
)
