# clipfilter: a Triton python-backend model running one CLIP tower (an ONNX file) with onnxruntime.
#
# Copied as `<model>/1/model.py` by tools/triton_repo.py; what it does comes from config.pbtxt's
# parameters, so the same file serves every model of the repository:
#   clipfilter_kind   image        pixel_values FP32 [N,3,H,W] (normalised) -> image_embeds
#                     image_fp16   pixel_values FP16 (normalised), cast to float32 first
#                     image_uint8  pixel_values UINT8 RGB; (x / (1/rescale) - mean) / std in float32,
#                                  exactly what the folded ONNX of `clipfilter-triton`'s fold does
#                     text         input_ids INT64 [N,L] (+ attention_mask) -> text_embeds
#   onnx_file         the ONNX file next to this model.py
#   image_mean, image_std, rescale_factor   (image_uint8) from the model's preprocessor_config.json
#   intra_op_threads  onnxruntime threads (default 1: the test machines share their cores)
#
# Requests gathered by dynamic batching run as one onnxruntime call; a request that cannot be batched
# with the others (or fails) gets its own error response.

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

KINDS = ("image", "image_fp16", "image_uint8", "text")


def _floats(text):
    return np.array([float(v) for v in text.replace(",", " ").split()], dtype=np.float32)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.kind = params.get("clipfilter_kind", "")
        if self.kind not in KINDS:
            raise pb_utils.TritonModelException(
                f"config.pbtxt parameter clipfilter_kind is '{self.kind}', expected one of {KINDS}"
            )
        path = os.path.join(args["model_repository"], args["model_version"], params["onnx_file"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.output = config["output"][0]["name"]
        if self.kind == "image_uint8":
            self.divisor = np.float32(1.0 / float(params["rescale_factor"]))
            self.mean = _floats(params["image_mean"]).reshape(1, 3, 1, 1)
            self.std = _floats(params["image_std"]).reshape(1, 3, 1, 1)

    def _feed(self, name, x):
        if self.kind == "image_fp16":
            return x.astype(np.float32)
        if self.kind == "image_uint8":
            if x.dtype != np.uint8:
                raise ValueError(f"{name}: expected uint8, got {x.dtype}")
            return (x.astype(np.float32) / self.divisor - self.mean) / self.std
        return x

    def _run(self, feeds):
        return self.session.run([self.output], feeds)[0].astype(np.float32, copy=False)

    def _response(self, out):
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output, out)])

    def _arrays(self, request):
        arrays = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"input '{name}' is missing")
            arrays[name] = tensor.as_numpy()
        return arrays

    def execute(self, requests):
        if len(requests) > 1:
            try:
                arrays = [self._arrays(r) for r in requests]
                sizes = [a[self.inputs[0]].shape[0] for a in arrays]
                feeds = {
                    name: self._feed(name, np.concatenate([a[name] for a in arrays])) for name in self.inputs
                }
                out = self._run(feeds)
                splits = np.cumsum(sizes)[:-1]
                return [self._response(np.ascontiguousarray(o)) for o in np.split(out, splits)]
            except Exception:  # noqa: BLE001 - not batchable together: answer each request on its own
                pass
        responses = []
        for request in requests:
            try:
                feeds = {name: self._feed(name, x) for name, x in self._arrays(request).items()}
                responses.append(self._response(self._run(feeds)))
            except Exception as e:  # noqa: BLE001 - the error goes back to the caller
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.kind}: {e}")))
        return responses
