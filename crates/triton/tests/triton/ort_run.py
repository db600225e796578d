"""Reference outputs for the clipfilter-triton tests: run an ONNX file with onnxruntime (CPU).

    python ort_run.py SPEC.json

SPEC: {"model": path, "outdir": path, "inputs": [{"name", "dtype": "float32|float16|uint8|int64",
"shape": [...], "file": raw little-endian bytes}]}. Writes every output as float32 to
OUTDIR/<name>.bin and prints [{"name", "shape", "file"}] as JSON on stdout.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

spec = json.loads(Path(sys.argv[1]).read_text())
options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
feeds = {
    i["name"]: np.fromfile(i["file"], dtype=np.dtype(i["dtype"]).newbyteorder("<")).reshape(i["shape"])
    for i in spec["inputs"]
}
names = [o.name for o in session.get_outputs()]
result = []
for name, value in zip(names, session.run(names, feeds)):
    path = Path(spec["outdir"]) / f"{name}.bin"
    np.ascontiguousarray(value, dtype="<f4").tofile(path)
    result.append({"name": name, "shape": list(value.shape), "file": str(path)})
print(json.dumps(result))
