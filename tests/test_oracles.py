"""The oracles agree with each other before they are trusted to judge the backends."""

import numpy as np
from hypothesis import given

from gpu_tconv.reference import conv_transpose_reference
from oracles import Problem, convolution_matrix, problems, torch_conv_transpose


@given(problems())
def test_reference_matches_pytorch(p: Problem):
    np.testing.assert_allclose(conv_transpose_reference(p.x, p.weight, p.bias, **p.params),
                               torch_conv_transpose(p), rtol=1e-10, atol=1e-10)


@given(problems(ranks=(1, 2), bias=False))
def test_reference_is_transpose_of_convolution_matrix(p: Problem):
    y = conv_transpose_reference(p.x, p.weight, None, **p.params)
    c = convolution_matrix(p, y.shape[2:])
    for sample in range(p.x.shape[0]):
        expected = (c.T @ p.x[sample].ravel()).reshape(y.shape[1:])
        np.testing.assert_allclose(y[sample], expected, rtol=1e-10, atol=1e-10)


def test_reference_on_a_hand_worked_case():
    # 1-D, stride 2, kernel [1, 10]: each input lands at 2i and 10x at 2i+1.
    y = conv_transpose_reference(np.array([[[1.0, 2.0, 3.0]]]), np.array([[[1.0, 10.0]]]),
                                 stride=2)
    np.testing.assert_array_equal(y, [[[1, 10, 2, 20, 3, 30]]])
    # padding 1 crops one element from each side; output_padding 1 adds one zero at the end.
    y = conv_transpose_reference(np.array([[[1.0, 2.0, 3.0]]]), np.array([[[1.0, 10.0]]]),
                                 stride=2, padding=1, output_padding=1)
    np.testing.assert_array_equal(y, [[[10, 2, 20, 3, 30]]])
