"""gpu_tconv.torch under torch.compile and torch.export: the operator is one graph node.

torch.compile runs with ``backend="aot_eager"`` (Dynamo and AOTAutograd, the stages that
see the operator, with eager kernels): inductor's C++ compile of the surrounding layers
takes about a minute on a 2-core machine and does not involve gpu_tconv.
"""

import pytest

torch = pytest.importorskip("torch")
from functorch.compile import make_boxed_func  # noqa: E402
from torch._dynamo.backends.common import aot_autograd  # noqa: E402
from torch._dynamo.testing import CompileCounterWithBackend  # noqa: E402

import gpu_tconv.torch as gtt  # noqa: E402

FORWARD = torch.ops.gpu_tconv.conv_transpose.default
BACKWARD = torch.ops.gpu_tconv.conv_transpose_backward.default


def model():
    """gpu_tconv layers (1-D data folded into 2-D ones) mixed with built-in layers."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        gtt.ConvTranspose2d(4, 4, 4, stride=2, padding=1, bias=False),
        torch.nn.SiLU(),
        gtt.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, groups=2,
                            dilation=1),
    ).double()


def targets(graph) -> list:
    return [node.target for node in graph.nodes if node.op == "call_function"]


def test_compile_fullgraph_matches_eager_outputs_and_gradients():
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm.graph)
        return make_boxed_func(gm.forward)

    net = model()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    compiled = torch.compile(net, fullgraph=True,
                             backend=aot_autograd(fw_compiler=record, bw_compiler=record))
    results = []
    for run in (compiled, net):
        net.zero_grad()
        xs = x.clone().requires_grad_()
        y = run(xs)
        y.square().sum().backward()
        results.append([y, xs.grad] + [p.grad for p in net.parameters()])
    for a, e in zip(*results):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    # One forward and one backward graph: the training step compiled whole, each
    # gpu_tconv layer one node of each, no NumPy traced.
    forward, backward = graphs
    assert targets(forward).count(FORWARD) == 2
    assert targets(backward).count(BACKWARD) == 2


def test_no_graph_breaks():
    explanation = torch._dynamo.explain(model())(torch.randn(2, 3, 5, 5, dtype=torch.float64))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_compiled_layer_with_dynamic_shapes():
    """Symbolic sizes reach the fake kernel: one graph for every batch and size."""
    torch.manual_seed(1)
    layer = gtt.ConvTranspose2d(3, 2, 3, stride=2, padding=1).double()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend=counter)
    for shape in ((2, 3, 5, 6), (3, 3, 4, 7)):
        x = torch.randn(shape, dtype=torch.float64)
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-12, atol=1e-12)
    assert counter.frame_count == 1


def test_export_keeps_one_node_per_layer_and_runs():
    net = model().eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    program = torch.export.export(net, (x,))
    assert targets(program.graph).count(FORWARD) == 2
    x2 = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(program.module()(x2), net(x2), rtol=1e-12, atol=1e-12)


def test_compiled_functional_calls_with_channels_last_and_padding_forms():
    def f(x, w1, w3):
        y = gtt.conv_transpose2d(x, w1, stride=2, padding="same")
        return gtt.conv_transpose3d(y.unsqueeze(2), w3, padding=((0, 1), (1, 0), (0, 0)))

    x = torch.randn(1, 2, 4, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    w1 = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    w3 = torch.randn(3, 1, 2, 2, 2, dtype=torch.float64)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, w1, w3), f(x, w1, w3), rtol=1e-12, atol=1e-12)


def test_compiled_autograd_traces_the_backward_operator():
    """The training step's backward compiled a second time, by compiled autograd: the
    registered backward is an operator, so the backward graph captures it whole."""
    from torch._dynamo import compiled_autograd

    torch.manual_seed(2)
    net = torch.nn.Sequential(gtt.ConvTranspose2d(3, 2, 3, stride=2), torch.nn.Tanh()).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    grads = []
    for compiled in (False, True):
        net.zero_grad()
        loss = net(x).square().sum()
        if compiled:
            graphs = []

            def compiler(gm):
                graphs.append(gm.graph)
                return torch.compile(gm, backend="aot_eager", fullgraph=True)

            with compiled_autograd._enable(compiler):
                loss.backward()
        else:
            loss.backward()
        grads.append([p.grad for p in net.parameters()])
    for a, e in zip(*grads):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    assert len(graphs) == 1
