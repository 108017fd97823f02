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
    on_grid,
    rel_error,
)


def check_model_directions(model, images, labels, grads, label_smoothing=0.1, seed=3):
    """Assert that `grads` (the model's own, at its current float64 parameters on the numpy backend)
    match central differences of the whole model's loss along random directions, each parameter's
    worst relative error within TOLERANCE["model"]."""
    params = dict(model.params)  # numpy backend: live arrays the check perturbs

    def loss():
        model.params = params
        return float(model.loss_and_grads(images, labels, label_smoothing=label_smoothing)[0])

    errors = directional_errors(loss, params, grads, h=STEP["model"], seed=seed)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE["model"], f"{worst}: relative error {errors[worst]:.2e}"
