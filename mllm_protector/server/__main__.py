"""`python -m mllm_protector.server --upstream URL` (same as `mllm-protector serve`)."""

import typer

from .cli import serve

if __name__ == "__main__":
    typer.run(serve)
