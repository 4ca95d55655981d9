"""Mixed-task batches in one ONNX graph: a loop over the tasks present around a one-task graph.

A traced graph cannot branch on its inputs' values, so the multi-task file is built in two
steps: the exporter traces :meth:`packtool.multitask.MultiTaskNet.run_task` (every row with one
task, ``task`` int64 ``[1]``), and :func:`route_by_task` wraps that graph as the body of an ONNX
``Loop`` over the distinct tasks of the ``task`` vector::

    rows  = Expand(task, [N])                  # a [1] task is every row's
    tasks = Unique(rows)                       # sorted
    for t in tasks:                            # Loop, one iteration per task present
        picked = NonZero(rows == t)            # the rows of task t
        out[picked] = body(input[picked], t)   # ScatterND into [N, ...] outputs

so a batch of one task runs the body once, on every row. The body's weights become the outer
graph's initializers (a loop body reads the outer scope); its internal names are kept, and the
outer graph's own names (``packtool_route/...``) cannot collide with them.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

PREFIX = "packtool_route/"
#: The symbolic length of the ``task`` input: one per row, or 1.
TASK_ROWS = "task_rows"


def route_by_task(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (inputs ``input`` ``[batch, ...]`` and ``task`` int64 ``[1]``; float outputs
    with the batch first) as a graph whose ``task`` is one task per row (``[batch]``) or one
    for all (``[1]``). The outputs keep their names, types and shapes."""
    body = model.graph
    x_in, task_in = body.input
    p = PREFIX
    nodes = [
        helper.make_node("Shape", [x_in.name], [p + "batch"], start=0, end=1),
        helper.make_node("Expand", [task_in.name, p + "batch"], [p + "rows"]),
        helper.make_node("Unique", [p + "rows"], [p + "tasks"], sorted=1),
        helper.make_node("Size", [p + "tasks"], [p + "trips"]),
    ]
    inits = []
    for out in body.output:
        tail = out.type.tensor_type.shape.dim[1:]
        if not all(d.HasField("dim_value") for d in tail):
            raise ValueError(f"output {out.name} has a dynamic shape past the batch")
        dims = [d.dim_value for d in tail]
        shape_name = p + out.name + "_tail"
        inits.append(helper.make_tensor(shape_name, TensorProto.INT64, [len(dims)], dims))
        nodes += [
            helper.make_node("Concat", [p + "batch", shape_name], [p + out.name + "_shape"],
                             axis=0),
            helper.make_node("ConstantOfShape", [p + out.name + "_shape"], [p + out.name + "_0"],
                             value=helper.make_tensor("zero", out.type.tensor_type.elem_type,
                                                      [1], [0])),
        ]
    nodes.append(helper.make_node(
        "Loop", [p + "trips", ""] + [p + o.name + "_0" for o in body.output],
        [o.name for o in body.output], body=_loop_body(body)))
    graph = helper.make_graph(
        nodes, body.name, [x_in, _task_input(task_in)], list(body.output),
        initializer=[*body.initializer, *inits], sparse_initializer=list(body.sparse_initializer))
    routed = helper.make_model(graph, opset_imports=list(model.opset_import),
                               ir_version=model.ir_version, producer_name=model.producer_name,
                               producer_version=model.producer_version,
                               functions=list(model.functions))
    routed.metadata_props.extend(model.metadata_props)
    return routed


def _task_input(task_in: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(task_in.name, TensorProto.INT64, [TASK_ROWS])


def _loop_body(body: onnx.GraphProto) -> onnx.GraphProto:
    """The Loop's body: pick iteration ``i``'s task and its rows, run ``body`` on them and
    scatter its outputs into the carried ``[N, ...]`` tensors."""
    p = PREFIX
    x_name, task_name = (v.name for v in body.input)
    outs = [o.name for o in body.output]
    # Rename the body's own inputs and outputs: they would shadow the outer graph's.
    rename = {x_name: p + "picked_input", task_name: p + "task", **{o: p + o + "_task"
                                                                    for o in outs}}
    inner = []
    for node in body.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [rename.get(n, n) for n in node.input]
        copy.output[:] = [rename.get(n, n) for n in node.output]
        inner.append(copy)
    nodes = [
        helper.make_node("Gather", [p + "tasks", p + "i"], [p + "t"], axis=0),
        helper.make_node("Unsqueeze", [p + "t", p + "axis0"], [p + "task"]),
        helper.make_node("Equal", [p + "rows", p + "task"], [p + "is_task"]),
        helper.make_node("NonZero", [p + "is_task"], [p + "where"]),  # [1, k]
        helper.make_node("Transpose", [p + "where"], [p + "scatter_at"], perm=[1, 0]),
        helper.make_node("Squeeze", [p + "where", p + "axis0"], [p + "picked"]),
        helper.make_node("Gather", [x_name, p + "picked"], [p + "picked_input"], axis=0),
        *inner,
        helper.make_node("Identity", [p + "cond"], [p + "cond_out"]),
        *[helper.make_node("ScatterND", [p + o + "_in", p + "scatter_at", p + o + "_task"],
                           [p + o + "_out"]) for o in outs],
    ]
    axis0 = helper.make_tensor(p + "axis0", TensorProto.INT64, [1], [0])
    inputs = [helper.make_tensor_value_info(p + "i", TensorProto.INT64, []),
              helper.make_tensor_value_info(p + "cond", TensorProto.BOOL, []),
              *[helper.make_tensor_value_info(p + o.name + "_in", o.type.tensor_type.elem_type,
                                              None) for o in body.output]]
    outputs = [helper.make_tensor_value_info(p + "cond_out", TensorProto.BOOL, []),
               *[helper.make_tensor_value_info(p + o.name + "_out",
                                               o.type.tensor_type.elem_type, None)
                 for o in body.output]]
    return helper.make_graph(nodes, "task_body", inputs, outputs, initializer=[axis0],
                             value_info=[_own_dims(v) for v in body.value_info])


def _own_dims(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``value`` with its symbolic dimensions renamed: the body's batch is one task's rows,
    not the outer graph's ``batch``."""
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(value)
    for dim in copy.type.tensor_type.shape.dim:
        if dim.HasField("dim_param"):
            dim.dim_param = PREFIX + dim.dim_param
    return copy


