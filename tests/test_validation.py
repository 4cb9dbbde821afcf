"""Bad input is refused before any work, with an error that names the parameter."""

import re

import numpy as np
import pytest

import gpu_tconv

X2 = np.zeros((2, 4, 5, 5), np.float32)
W2 = np.zeros((4, 3, 3, 3), np.float32)


def call(x=X2, w=W2, backend="numpy", **kw):
    return gpu_tconv.conv_transpose2d(x, w, backend=backend, **kw)


@pytest.mark.parametrize("kwargs, error, word", [
    (dict(x=np.zeros((2, 4, 5), np.float32)), ValueError, "x"),
    (dict(w=np.zeros((4, 3, 3), np.float32)), ValueError, "weight"),
    (dict(w=np.zeros((5, 3, 3, 3), np.float32)), ValueError, "weight.shape[0]"),
    (dict(groups=3), ValueError, "groups"),
    (dict(groups=0), ValueError, "groups"),
    (dict(groups=2.0), TypeError, "groups"),
    (dict(stride=0), ValueError, "stride"),
    (dict(stride=(1, -1)), ValueError, "stride"),
    (dict(dilation=0), ValueError, "dilation"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(output_padding=-1), ValueError, "output_padding"),
    (dict(output_padding=1), ValueError, "output_padding"),            # stride 1, dilation 1
    (dict(stride=2, output_padding=2), ValueError, "output_padding"),
    (dict(stride=(2, 1), output_padding=(1, 1)), ValueError, "output_padding"),
    (dict(stride=(1, 2, 3)), ValueError, "stride"),
    (dict(padding=(1,)), ValueError, "padding"),
    (dict(stride=1.5), TypeError, "stride"),
    (dict(padding="full"), ValueError, "padding"),
    (dict(padding=((1, 1), 1)), ValueError, "padding"),
    (dict(padding="same", output_padding=1, stride=2), ValueError, "output_padding"),
    (dict(padding="valid", output_size=(9, 9)), ValueError, "output_size"),
    (dict(stride=2, output_size=(13, 13)), ValueError, "output_size"),
    (dict(stride=2, output_size=(11, 11), output_padding=1), ValueError, "output_padding"),
    (dict(layout="NHWC"), ValueError, "layout"),
    (dict(dilation=True), TypeError, "dilation"),
    (dict(padding=4), ValueError, "padding"),                          # output size <= 0
    (dict(stride=2**31), ValueError, "stride"),
    (dict(x=X2.astype(np.int32)), TypeError, "x"),
    (dict(x=X2.astype(np.complex64)), TypeError, "x"),
    (dict(x=X2.astype(bool)), TypeError, "x"),
    (dict(w=W2.astype(np.float64)), TypeError, "weight"),
    (dict(bias=np.zeros(3, np.float64)), TypeError, "bias"),
    (dict(bias=np.zeros(4, np.float32)), ValueError, "bias"),
    (dict(bias=np.zeros((1, 3), np.float32)), ValueError, "bias"),
    (dict(x=np.zeros((2, 0, 5, 5), np.float32), w=np.zeros((0, 3, 3, 3), np.float32)),
     ValueError, "x"),
    (dict(x=np.zeros((2, 4, 0, 5), np.float32)), ValueError, "x"),
    (dict(w=np.zeros((4, 0, 3, 3), np.float32)), ValueError, "weight"),
    (dict(w=np.zeros((4, 3, 0, 3), np.float32)), ValueError, "weight"),
    (dict(backend="gpu"), ValueError, "backend"),
])
def test_bad_input_names_the_parameter(kwargs, error, word):
    with pytest.raises(error, match=re.escape(word)):
        call(**kwargs)


def test_rank_from_weight():
    with pytest.raises(ValueError, match="weight"):
        gpu_tconv.conv_transpose(np.zeros((1, 1, 2, 2, 2, 2)), np.zeros((1, 1, 1, 1, 1, 1)))
    with pytest.raises(ValueError, match="x must have 4"):
        gpu_tconv.conv_transpose(np.zeros((1, 1, 2)), np.zeros((1, 1, 1, 1)))


def test_output_padding_may_reach_dilation():
    # PyTorch allows output_padding < max(stride, dilation): here stride 1, dilation 3.
    y = call(dilation=3, output_padding=2)
    assert y.shape == (2, 3, 13, 13)


def test_huge_sizes_are_refused_without_allocating():
    with pytest.raises(ValueError, match="output"):
        gpu_tconv.output_shape((2**40, 2**10, 2**10), (2**10, 2**14, 1))


def test_unusable_cuda_backend_says_why():
    from gpu_tconv import cuda_backend

    reason = cuda_backend.unavailable_reason()
    if reason is None:
        pytest.skip("a GPU is usable here")
    with pytest.raises(RuntimeError, match="cuda backend") as info:
        call(backend="cuda")
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("args, kwargs, expected", [
    (((1, 4, 5, 5), (4, 3, 3, 3)), {}, (1, 3, 7, 7)),
    (((8, 64, 64, 64), (64, 32, 4, 4)), dict(stride=2, padding=1), (8, 32, 128, 128)),
    (((2, 16, 16, 16, 16), (16, 8, 3, 3, 3)), dict(stride=2, padding=1, output_padding=1),
     (2, 8, 32, 32, 32)),
    (((1, 6, 10), (6, 2, 3)), dict(groups=3, dilation=2, stride=3), (1, 6, 32)),
])
def test_output_shape(args, kwargs, expected):
    assert gpu_tconv.output_shape(*args, **kwargs) == expected
