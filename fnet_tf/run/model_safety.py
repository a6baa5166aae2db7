"""Inspect a Keras model file someone else made *before* anything deserializes it.

A Keras model file is not just data: a ``Lambda`` layer stores Python bytecode that Keras
runs when it rebuilds the layer (a legacy ``.h5`` file runs it with no warning), a custom
layer class names Python code to import, and a SavedModel is a TensorFlow program whose ops
can read and write files (TensorFlow's security guidance: "running untrusted models is
equivalent to running untrusted code"). So every loader of a user's model calls
``check_model_file`` first, which reads only the model's declared structure with bounded
reads and refuses, in one line that names the layer or op:

- a ``Lambda`` layer or a serialized Python lambda/function that is not Keras' own;
- a layer (or initializer, constraint, quantizer, ...) whose class is not a built-in Keras,
  TF-MOT or registered fnet_tf class, or whose ``module`` is not one of those packages;
- a ``TFOpLambda`` that calls a TensorFlow function outside its math namespaces (it could be
  ``tf.io.write_file``);
- in a SavedModel: a file-system, process or I/O op (``WriteFile``, ``ReadFile``,
  ``MatchingFiles``, ``PyFunc``, summary writers, dataset readers, ...) anywhere in the graph
  or its functions, and ``Save*``/``Restore*`` ops anywhere but in the functions that the
  SavedModel's own saver runs to restore its variables.

``--trust_model_code`` (only for files you made) skips the inspection and Keras' safe mode.
"""
import inspect
import json
import os
import zipfile

from fnet_tf.arch import grouped
from fnet_tf.core import backend
from fnet_tf.core.errors import UserError

MAX_CONFIG_BYTES = 64 << 20   # a model's JSON architecture; fnet_tf's are ~100 KB
MAX_GRAPH_BYTES = 512 << 20   # a SavedModel's saved_model.pb / keras_metadata.pb

TRUST_HINT = ("load only files you made, and then with --trust_model_code")

# Ops that touch the file system, processes, the network or Python: never in a model that
# only maps images to logits. (Names from TensorFlow's op registry.)
DENIED_OPS = frozenset({
    "WriteFile", "ReadFile", "MatchingFiles", "DeleteFile", "ImmutableConst",
    "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "Print", "PrintV2", "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3",
    "DebugNanCount", "DebugNumericSummary", "DebugNumericSummaryV2",
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "SummaryWriter", "WriteSummary",
    "WriteScalarSummary", "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary",
    "WriteGraphSummary", "WriteRawProtoSummary", "ImportEvent", "FlushSummaryWriter",
    "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
    "FixedLengthRecordDatasetV2", "ExperimentalCSVDataset", "CSVDataset", "CSVDatasetV2",
    "SqlDataset", "ExperimentalSqlDataset", "LMDBDataset", "ExperimentalLMDBDataset",
    "SaveDataset", "SaveDatasetV2", "LoadDataset", "DatasetToTFRecord",
    "ExperimentalDatasetToTFRecord", "TFRecordReader", "TFRecordReaderV2", "TextLineReader",
    "TextLineReaderV2", "WholeFileReader", "WholeFileReaderV2", "FixedLengthRecordReader",
    "FixedLengthRecordReaderV2", "IdentityReader", "IdentityReaderV2", "LMDBReader",
    "RecordInput", "LoadAndRemapMatrix", "DecodeProtoV2", "EncodeProto",
    "Rpc", "TryRpc", "GenerateVocabRemapping", "InitializeTableFromTextFile",
    "InitializeTableFromTextFileV2", "DebugGradientIdentity",
})
# Checkpoint ops: a SavedModel's own saver functions need them, nothing else does.
SAVER_OPS = frozenset({
    "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice",
    "MergeV2Checkpoints", "ShardedFilename", "ShardedFilespec",
})

# TFOpLambda / SlicingOpLambda call ``tf.<function>``: pure math only.
_TF_OP_NAMESPACES = ("math.", "nn.", "__operators__.", "linalg.", "image.resize",
                     "compat.v1.transpose", "compat.v1.gather")
_TF_OP_FUNCTIONS = frozenset({
    "reshape", "transpose", "concat", "stack", "unstack", "split", "squeeze", "expand_dims",
    "identity", "cast", "clip_by_value", "gather", "pad", "tile", "where", "ones_like",
    "zeros_like", "shape", "slice", "strided_slice", "broadcast_to", "einsum", "matmul",
    "reduce_mean", "reduce_sum", "reduce_max", "reduce_min", "argmax", "argmin", "one_hot",
    "nest.flatten", "convert_to_tensor", "range", "size", "rank", "fill",
})
_PURE_PACKAGES = ("keras", "tf_keras", "tensorflow_model_optimization", "fnet_tf")
# Built-in layers that run code or load programs named in their config: Lambda (Python
# bytecode), Keras 3's TFSMLayer (loads the SavedModel at a path), TorchModuleWrapper (a
# pickled torch module), JaxLayer and FlaxLayer (a Python function or Flax module).
CODE_LAYERS = frozenset({"Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer"})


def check_model_file(path):
    """Raise a one-line UserError if the Keras model at ``path`` (``.keras``, ``.h5``/
    ``.hdf5`` or a SavedModel directory) holds code; return the number of objects checked."""
    if os.path.isdir(path):
        return _check_saved_model(path)
    lower = path.lower()
    if lower.endswith(".keras"):
        return _check_config(path, _keras_v3_config(path))
    if lower.endswith((".h5", ".hdf5")):
        return _check_config(path, _h5_config(path))
    raise UserError(f"{path!r} is not a .keras/.h5 file or a SavedModel directory")


# --- reading the declared structure, bounded ------------------------------------------------

def _keras_v3_config(path):
    try:
        with zipfile.ZipFile(path) as z:
            try:
                info = z.getinfo("config.json")
            except KeyError:
                raise UserError(f"{path!r} has no config.json: it is not a .keras model "
                                f"(or it is damaged); re-export it") from None
            if info.file_size > MAX_CONFIG_BYTES:
                raise UserError(f"{path!r} declares a {info.file_size / 2**20:.0f} MB "
                                f"config.json, over the {MAX_CONFIG_BYTES >> 20} MB limit for "
                                f"a model architecture: refusing to decompress it")
            with z.open(info) as f:
                text = f.read(MAX_CONFIG_BYTES + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise UserError(f"cannot load Keras model {path!r} ({type(e).__name__}): the file is "
                        f"corrupt or not a .keras model; re-export it") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise UserError(f"{path!r}: config.json is over the {MAX_CONFIG_BYTES >> 20} MB limit")
    return _parse_json(path, text)


def _h5_config(path):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attribute = f.attrs.get("model_config")
            if attribute is None and "model_config" in f:
                attribute = f["model_config"][()]
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load Keras model {path!r} ({type(e).__name__}): the file is "
                        f"corrupt or not an HDF5 Keras model; re-export it") from None
    if attribute is None:
        raise UserError(f"{path!r} holds no model architecture (model_config): it is a weights "
                        f"file, not a model; pass the model saved with model.save()")
    text = attribute if isinstance(attribute, (bytes, str)) else bytes(attribute)
    if len(text) > MAX_CONFIG_BYTES:
        raise UserError(f"{path!r}: its model_config is over the {MAX_CONFIG_BYTES >> 20} MB limit")
    return _parse_json(path, text)


def _parse_json(path, text):
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f"{path!r}: its model architecture is not valid JSON ({e}): the file "
                        f"is corrupt; re-export it") from None


def _read_bounded(path, limit):
    size = os.path.getsize(path)
    if size > limit:
        raise UserError(f"{path!r} is {size / 2**20:.0f} MB, over the {limit >> 20} MB limit "
                        f"for a model graph")
    with open(path, "rb") as f:
        return f.read(limit + 1)


# --- the configuration's objects ------------------------------------------------------------

def _allowed_classes():
    """Class names that are Keras', TF-MOT's or fnet_tf's own (computed once)."""
    global _ALLOWED
    if _ALLOWED is not None:
        return _ALLOWED
    import tensorflow_model_optimization as tfmot


    grouped.keras_classes()  # registers fnet_tf's layer classes with Keras
    keras = backend.keras

    names = {"Functional", "Sequential", "Model", "function", "TFOpLambda", "SlicingOpLambda",
             # values, not code: shapes and specs in a SavedModel's Keras metadata
             "TensorShape", "TypeSpec", "TensorSpec", "RaggedTensorSpec", "SparseTensorSpec",
             "DType"}
    for module in (keras.layers, keras.initializers, keras.regularizers, keras.constraints,
                   keras.optimizers, keras.optimizers.schedules, keras.losses, keras.metrics,
                   keras.activations):
        names.update(n for n, o in vars(module).items() if inspect.isclass(o))
    scope = tfmot.quantization.keras.quantize_scope()
    for objects in getattr(scope, "custom_objects", ()):
        names.update(objects)
    names.update(key.split(">", 1)[1] for key in keras.utils.get_custom_objects()
                 if key.startswith("fnet_tf>"))
    names.update(TRAINING_STATE_CLASSES)
    names.update(_keras3_classes())
    _ALLOWED = frozenset(names - CODE_LAYERS)
    return _ALLOWED


def _keras3_classes():
    """Keras 3's own config classes (installed beside tf_keras by TensorFlow 2.16+): its
    layers, initializers, regularizers, constraints, dtype policies, the functional graph."""
    try:
        import keras as keras3
    except ImportError:  # pragma: no cover  (TensorFlow 2.21 installs it)
        return set()
    names = {"Functional", "Sequential", "Model", "DTypePolicy", "FloatDTypePolicy",
             "QuantizedDTypePolicy", "DTypePolicyMap"}
    for module in (keras3.layers, keras3.initializers, keras3.regularizers, keras3.constraints,
                   keras3.optimizers, keras3.optimizers.schedules, keras3.losses, keras3.metrics,
                   keras3.activations, keras3.dtype_policies):
        names.update(n for n, o in vars(module).items() if inspect.isclass(o))
    return names


_ALLOWED = None
# fnet_tf's classes that a saved model names only in its optimizer's state: models load with
# compile=False, so these are never deserialized (their module loads TensorFlow to define them)
TRAINING_STATE_CLASSES = frozenset({"WarmupCosine"})


def _objects(node, layer=None):
    """Yield (object dict, name of the enclosing layer) for every serialized object."""
    if isinstance(node, dict):
        if "class_name" in node:
            config = node.get("config")
            name = config.get("name") if isinstance(config, dict) else None
            layer = node.get("name") or name or layer
            yield node, layer
        for key, value in node.items():
            if key not in ("compile_config", "training_config"):  # never deserialized here
                yield from _objects(value, layer)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value, layer)


def _refusal(path, layer, why):
    where = f"layer {layer!r}" if layer else "an object"
    return UserError(f"model {path} refused: {where} {why}; {TRUST_HINT}")


def _check_object(path, obj, layer):
    cls, module = obj.get("class_name"), obj.get("module")
    config = obj.get("config")
    if not isinstance(cls, str):
        raise _refusal(path, layer, "has a malformed class name")
    if cls == "Lambda":
        raise _refusal(path, layer, "is a Lambda layer: it contains Python code that would "
                       "run on loading")
    if cls in CODE_LAYERS:
        raise _refusal(path, layer, f"is a {cls} layer: it loads or runs code that is not in "
                       f"the model's layers")
    if cls == "__lambda__" or (isinstance(config, dict) and config.get("function_type") == "lambda"):
        raise _refusal(path, layer, "holds a serialized Python lambda: it contains Python code")
    if cls.startswith("__") and cls.endswith("__"):  # __tuple__, __tensor__, __numpy__, ...
        return
    if isinstance(module, str) and module and module.split(".")[0] not in _PURE_PACKAGES:
        raise _refusal(path, layer, f"has class {cls} from module {module!r}, not Keras, TF-MOT "
                       f"or fnet_tf: a custom class contains Python code")
    if cls == "function" and not (isinstance(module, str) and module.split(".")[0] in
                                  _PURE_PACKAGES):
        raise _refusal(path, layer, "refers to a Python function that is not Keras' own: it "
                       "contains Python code")
    if cls not in _allowed_classes():
        registered = obj.get("registered_name")
        shown = f"{cls} ({registered})" if registered and registered != cls else cls
        raise _refusal(path, layer, f"has class {shown}, which is not a built-in Keras, TF-MOT "
                       f"or fnet_tf layer: a custom class contains Python code")
    if cls in ("TFOpLambda", "SlicingOpLambda") and isinstance(config, dict):
        function = str(config.get("function", ""))
        if not (function.startswith(_TF_OP_NAMESPACES) or function in _TF_OP_FUNCTIONS):
            raise _refusal(path, layer, f"calls tf.{function}, which is not a math op (it could "
                           f"touch files)")


def _check_config(path, config):
    count = 0
    try:
        for obj, layer in _objects(config):
            _check_object(path, obj, layer)
            count += 1
    except RecursionError:
        raise UserError(f"{path!r}: its model architecture is nested too deeply to be a real "
                        f"model: the file is corrupt or crafted; refusing it") from None
    if not count:
        raise UserError(f"{path!r} declares no layers: the file is corrupt or not a Keras model")
    return count


# --- SavedModel -----------------------------------------------------------------------------

def _check_saved_model(path):
    from tensorflow.core.protobuf import saved_model_pb2

    pb = os.path.join(path, "saved_model.pb")
    if not os.path.isfile(pb):
        raise UserError(f"{path!r} is a directory without saved_model.pb: pass a run directory, "
                        f"a .keras/.h5 file or a SavedModel directory")
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(_read_bounded(pb, MAX_GRAPH_BYTES))
    except Exception as e:  # noqa: BLE001  (protobuf's DecodeError and friends)
        raise UserError(f"{pb} is not a valid SavedModel ({type(e).__name__}): the file is "
                        f"corrupt; re-export it") from None
    count = 0
    for meta_graph in saved.meta_graphs:
        count += _check_graph(path, meta_graph)
    metadata = os.path.join(path, "keras_metadata.pb")
    if os.path.isfile(metadata):
        count += _check_keras_metadata(path, metadata)
    return count


def _called_functions(node, library):
    """Names of the library functions a NodeDef calls (function attributes, or the op itself)."""
    called = {node.op} & library.keys()
    for attr in node.attr.values():
        if attr.HasField("func"):
            called.add(attr.func.name)
        if attr.HasField("list"):
            called.update(f.name for f in attr.list.func)
    return called


def _check_graph(path, meta_graph):
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    saver = meta_graph.saver_def
    saver_nodes = {name.split(":")[0] for name in (saver.save_tensor_name, saver.restore_op_name)
                   if name}

    def reachable(roots):
        seen, stack = set(), list(roots)
        while stack:
            name = stack.pop()
            if name in seen or name not in library:
                continue
            seen.add(name)
            for inner in library[name].node_def:
                stack.extend(_called_functions(inner, library))
        return seen

    saver_functions = reachable(f for n in saver_nodes if n in nodes
                                for f in _called_functions(nodes[n], library))
    program_roots = {f for n in nodes.values() if n.name not in saver_nodes
                     for f in _called_functions(n, library)}
    # every function the object graph can call, and any the graph does not reach at all
    program_roots |= set(meta_graph.object_graph_def.concrete_functions)
    program_roots |= set(library) - saver_functions
    program = reachable(program_roots)

    def refuse(op, where):
        kind = ("a checkpoint op outside the model's own saver" if op in SAVER_OPS
                else "a file-system, process or I/O op")
        return UserError(f"SavedModel {path} refused: its graph holds {op} ({where}), {kind} "
                         f"that would run when the model is loaded or called; a SavedModel is a "
                         f"program: {TRUST_HINT}")

    for node in nodes.values():
        if node.op in DENIED_OPS or (node.op in SAVER_OPS and node.name not in saver_nodes):
            raise refuse(node.op, f"node {node.name}")
    for name in sorted(program | saver_functions):
        denied = DENIED_OPS if name in saver_functions and name not in program else \
            DENIED_OPS | SAVER_OPS
        for inner in library[name].node_def:
            if inner.op in denied:
                raise refuse(inner.op, f"in function {name}")
    return len(nodes) + sum(len(library[n].node_def) for n in library)


def _check_keras_metadata(path, metadata_path):
    try:
        from tf_keras.protobuf import saved_metadata_pb2
    except ImportError:  # pragma: no cover  (tf_keras always ships it)
        return 0
    metadata = saved_metadata_pb2.SavedMetadata()
    try:
        metadata.ParseFromString(_read_bounded(metadata_path, MAX_GRAPH_BYTES))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{metadata_path} is not valid Keras metadata ({type(e).__name__}): the "
                        f"SavedModel is corrupt; re-export it") from None
    count = 0
    for node in metadata.nodes:
        if node.metadata:
            count += _check_config(path, _parse_json(path, node.metadata))
    return count
