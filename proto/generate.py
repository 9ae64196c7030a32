"""Generates the Python stubs of ``proto/interest/v1`` (the one command: ``python -m proto.generate``).

protoc runs with ``proto/`` as the include root, so descriptor file names are buf-style
(``interest/v1/interest.proto``) and reflection clients see the canonical paths. protoc then writes imports as
``from interest.v1 import ...``; we rewrite those to ``from proto.interest.v1 import ...`` so the stubs import
as part of this project's ``proto`` package (installed or not) without touching ``sys.path``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "interest" / "v1"
_IMPORT = re.compile(r"^from interest\.v1 import ", re.MULTILINE)


def main() -> int:
    import grpc_tools
    from grpc_tools import protoc  # a build-time tool, imported only here

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(ROOT)) for p in OUT.glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *sources,
    ]
    rc = protoc.main(args)
    if rc != 0:
        print(f"protoc failed ({rc})", file=sys.stderr)
        return rc
    for path in OUT.glob("*_pb2*.py*"):
        text = path.read_text()
        fixed = _IMPORT.sub("from proto.interest.v1 import ", text)
        if fixed != text:
            path.write_text(fixed)
    print(f"generated {len(sources)} proto file(s) into {OUT.relative_to(ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
