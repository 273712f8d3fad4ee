"""Benchmark scripts: each prints its measurements, ratios measured side by side in one run,
beside what they were measured with (`header`), and refuses bad arguments and settings with
one line (`positive_int`, `run`)."""

import sys
from typing import Callable

from ldct.cli import positive_int  # noqa: F401  (the scripts' argparse type for counts)


def header(device: str | None = None) -> str:
    """What a benchmark's numbers were measured with: the project's commit and the package
    versions, the CPU (model, kernels, torch threads) and, on CUDA, the GPU."""
    from ldct.provenance import machine, versions

    where = machine(device)
    gpu = f"; GPU {where['gpu']} (CUDA {where['cuda']}, cuDNN {where['cudnn']})" if "gpu" in where else ""
    return (f"Measured with {', '.join(f'{k} {v}' for k, v in versions().items())}; CPU {where['cpu']} "
            f"({where['cpu_capability']}, torch threads {where['torch_threads']}){gpu}")


def run(main: Callable[[], object]) -> None:
    """Run a script's `main`, a setting it cannot use (a GPU asked for on a machine without one,
    a missing config) as one line, not a traceback."""
    from ldct.errors import LdctError

    try:
        code = main()
    except (LdctError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
