#!/usr/bin/env python3
"""Check kserve_v2.proto field by field against Triton's own grpc_service.proto descriptor.

    pip download --no-deps --only-binary=:all: tritonclient[grpc]==2.51.0 -d /tmp/tc
    .local/triton/venv/bin/python crates/triton/proto/check_subset.py /tmp/tc/tritonclient-2.51.0-*.whl

The wheel's tritonclient/grpc/service_pb2.py embeds the compiled grpc_service.proto; every message,
field (name, number, type, repeated) and RPC of kserve_v2.proto must be there, identical.
Needs the protobuf package (the venv of tools/setup-triton.sh has it). Exit code 1 on a difference.
"""

import ast
import re
import sys
import zipfile
from pathlib import Path

from google.protobuf import descriptor_pb2

TYPES = {1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 8: "bool", 9: "string",
         12: "bytes", 13: "uint32"}


def upstream(wheel):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith("tritonclient/grpc/service_pb2.py"))
        src = z.read(name).decode()
    blob = re.search(r"AddSerializedFile\((b'.*?')\)", src, re.S).group(1)
    fdp = descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(blob))
    fields = {}

    def walk(messages, prefix):
        for d in messages:
            fields[prefix + d.name] = {f.name: f for f in d.field}
            walk(d.nested_type, prefix + d.name + ".")

    walk(fdp.message_type, "")
    rpcs = {m.name: (m.input_type, m.output_type) for s in fdp.service for m in s.method}
    return fdp, fields, rpcs


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    fdp, up, rpcs = upstream(sys.argv[1])
    text = re.sub(r"//.*", "", (Path(__file__).parent / "kserve_v2.proto").read_text())
    problems, checked, stack = [], 0, []
    if fdp.package != "inference":
        problems.append(f"upstream package is {fdp.package}")
    for tok in re.findall(r"rpc\s+[^{;]+\{\s*\}|message\s+\w+\s*\{|oneof\s+\w+\s*\{|service\s+\w+\s*\{|\}|[^;{}]+;", text):
        tok = tok.strip()
        if tok.startswith(("message", "oneof", "service")):
            stack.append((tok.split()[0], tok.split()[1].rstrip("{")))
        elif tok == "}":
            stack.pop()
        elif tok.startswith("rpc"):
            m = re.match(r"rpc\s+(\w+)\((\w+)\)\s+returns\s+\((\w+)\)", tok)
            want = (f".inference.{m.group(2)}", f".inference.{m.group(3)}")
            if rpcs.get(m.group(1)) != want:
                problems.append(f"rpc {m.group(1)}: ours {want}, upstream {rpcs.get(m.group(1))}")
        else:
            m = re.match(r"(repeated\s+)?(map<[^>]+>|[\w.]+)\s+(\w+)\s*=\s*(\d+)", tok)
            if not m:
                continue
            msg = ".".join(name for kind, name in stack if kind == "message")
            f = up.get(msg, {}).get(m.group(3))
            checked += 1
            if f is None:
                problems.append(f"{msg}.{m.group(3)}: not upstream")
                continue
            ours, repeated = m.group(2), bool(m.group(1)) or m.group(2).startswith("map<")
            theirs = TYPES.get(f.type) or f.type_name.split(".")[-1]
            same_type = ours == theirs or ours.split(".")[-1] == theirs or (ours.startswith("map<") and theirs.endswith("Entry"))
            if f.number != int(m.group(4)) or not same_type or repeated != (f.label == 3):
                problems.append(f"{msg}.{m.group(3)}: ours {ours} = {m.group(4)}, upstream {theirs} = {f.number}")
    for p in problems:
        print("DIFF", p)
    print(f"{checked} fields checked against {fdp.name} ({len(rpcs)} upstream RPCs): {len(problems)} differences")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
