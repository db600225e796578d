"""clipfilter model tools: test fixtures, reference outputs, model export and speed baselines.

Run it through the wrapper, which picks (and creates or updates) the right virtual environment:

    tools/clip-tools <subcommand> [options]

Subcommands (details: `tools/clip-tools <subcommand> --help`, and tools/README.md):

    make-fixtures     write tests/fixtures/ (tiny CLIP models, oracle models, reference JSON)  [tools venv]
    make-digits       train the digits fixture model, write tests/fixtures/digits/ (~3 min)    [tools venv]
    check-fixtures    run every committed fixture model with onnxruntime against its references   [ref venv]
    photo-refs        CLIPImageProcessor pixel references for .local/media/photos/                 [ref venv]
    export            export a transformers or OpenCLIP checkpoint into clipfilter's model layout  [tools venv]
    export-random-b32 full-size ViT-B/32 with random weights (benchmarks)                          [tools venv]
    bench-baselines   images/s of onnxruntime-python and transformers/PyTorch (JSON lines)         [either]

Heavy imports (torch, transformers, open_clip, onnx) happen inside the subcommands, so `--help`
works with any python3.
"""
