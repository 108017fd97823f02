"""tinyvit.errors: the user-input error type and the one label check shared by the model, the
loss kernels and the data loaders."""

import numpy as np
import pytest

from tinyvit.errors import UsageError, check_labels


def test_usage_error_is_a_value_error():
    assert issubclass(UsageError, ValueError)


@pytest.mark.parametrize("labels, count, message", [
    ([[0], [1]], None, r"labels must have shape \(N,\), got \(2, 1\)"),
    ([0, 1, 2], 2, r"labels must have shape \(2,\), got \(3,\)"),
    ([0.0, 1.0], 2, r"labels must be integers, got dtype float64"),
    ([True, False], 2, r"labels must be integers, got dtype bool"),
    ([0, 3], 2, r"labels must be in \[0, 3\), got values from 0 to 3"),
    ([-1, 2], None, r"labels must be in \[0, 3\), got values from -1 to 2"),
])  # fmt: skip
def test_bad_labels_are_a_value_error_naming_what_was_expected(labels, count, message):
    with pytest.raises(ValueError, match=message):
        check_labels(labels, 3, count)


def test_good_labels_come_back_as_contiguous_int64_and_the_input_is_untouched():
    labels = np.array([2, 0, 1, 2, 0], dtype=np.uint8)[::2]  # a strided view of another integer type
    out = check_labels(labels, 3, 3)
    assert out.dtype == np.int64 and out.flags.c_contiguous and out.tolist() == [2, 1, 0]
    assert labels.dtype == np.uint8
    assert check_labels([], 3).shape == (0,), "no labels at all is not an error"
