"""Export the API's OpenAPI document: ``make openapi`` writes docs/openapi.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from devstack.lambda_runtime import load_handler


def openapi_document() -> dict:
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    load_handler("api")
    app = sys.modules["mailsync_fn_api"].app
    version = sys.modules["mailsync"].__version__  # loaded with the handler, from the layer
    return json.loads(
        app.get_openapi_json_schema(
            title="Mailsync API",
            version=version,
            description="Mail settings, folder maps and messages for the CRM.",
        )
    )


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/openapi.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
