"""Where a weight sits in an ONNX graph: the layer the input feeds, the layer that feeds an output.

Rules that reason from structure need this. "The first layer" of a network is the one
whose kernels see input pixels, which in a graph is a fact, not a guess from shapes: a
depthwise convolution deep inside a mobile network has one input channel per kernel just
like a grayscale stem, but no path from the graph's input reaches it without crossing
another weighted layer. Likewise the output head (units = classes) is the weighted layer
that reaches a graph output without crossing another one.

Only the main graph is walked: subgraphs (If/Loop bodies) are rare in exported models and
are not where first layers or heads live.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from onnx import GraphProto, NodeProto

INPUT, OUTPUT = "input", "output"
_WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger"})
# Recurrent cells are weighted layers too: walking through one would carry "output" from a
# state output back to the encoder that feeds the cell.
_RECURRENT = frozenset({"LSTM", "GRU", "RNN"})
_PASS_THROUGH = frozenset({"Identity", "Transpose", "Cast", "DequantizeLinear", "Reshape"})
# Their outputs depend on a tensor's shape, never on its values: following them would link
# unrelated layers (a Reshape whose target shape is read off a deep feature map).
_SHAPE_ONLY = frozenset({"Shape", "Size"})
# Bounds the walk on hostile graphs; real models have at most tens of thousands of nodes.
MAX_NODES = 2_000_000


def weight_positions(graph: GraphProto) -> dict[str, str]:
    """{weight name: "input" | "output"} for the weighted layers next to the graph's ends.

    A weighted layer is a Conv/Gemm/MatMul whose weight operand is a constant (an
    initializer or a Constant node, possibly through Transpose/Cast/DequantizeLinear).
    """
    nodes = list(graph.node)[:MAX_NODES]
    constants = {t.name for t in graph.initializer}
    producer: dict[str, NodeProto] = {}
    consumers: dict[str, list[NodeProto]] = {}
    for node in nodes:
        for out in node.output:
            producer[out] = node
        for name in node.input:
            if name:
                consumers.setdefault(name, []).append(node)
    for node in nodes:
        if node.op_type == "Constant" and node.output:
            constants.add(node.output[0])
    weight_of: dict[int, str | None] = {}
    for node in nodes:
        if node.op_type in _RECURRENT and len(node.input) > 1:
            # A cell's weights may be sliced or reshaped on the way in; it is a layer anyway.
            weight_of[id(node)] = _constant_source(node.input[1], producer, constants)
        elif node.op_type in _WEIGHTED and len(node.input) > 1:
            source = _constant_source(node.input[1], producer, constants)
            if source is not None:
                weight_of[id(node)] = source
    data_inputs = [i.name for i in graph.input if i.name not in constants]
    positions: dict[str, str] = {}
    for node in _reach(data_inputs, consumers, weight_of, forward=True):
        if (name := weight_of[id(node)]) is not None:
            positions[name] = INPUT
    outputs = [o.name for o in graph.output]
    for node in _reach(outputs, producer, weight_of, forward=False):
        # A single-layer model's only layer is both; "input" is what the kernel rules need.
        if (name := weight_of[id(node)]) is not None:
            positions.setdefault(name, OUTPUT)
    return positions


def _constant_source(name: str, producer: dict, constants: set[str]) -> str | None:
    for _ in range(16):
        if name in constants:
            return name
        node = producer.get(name)
        if node is None or node.op_type not in _PASS_THROUGH or not node.input:
            return None
        name = node.input[0]
    return None


def _reach(
    start: Iterable[str], links: dict, weight_of: dict[int, str | None], *, forward: bool
) -> list[NodeProto]:
    """The weighted nodes reached from `start` without crossing another weighted node."""
    seen_values = set(start)
    seen_nodes: set[int] = set()
    queue = deque(seen_values)
    found: list[NodeProto] = []
    while queue and len(seen_nodes) < MAX_NODES:
        value = queue.popleft()
        linked = links.get(value, [])
        for node in linked if forward else [linked]:
            if not node or id(node) in seen_nodes or node.op_type in _SHAPE_ONLY:
                continue
            seen_nodes.add(id(node))
            if id(node) in weight_of:
                found.append(node)
                continue
            for nxt in node.output if forward else node.input:
                if nxt and nxt not in seen_values:
                    seen_values.add(nxt)
                    queue.append(nxt)
    return found
