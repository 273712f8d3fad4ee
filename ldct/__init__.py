"""ldct: the library behind the LDCT brain-CT denoising benchmark.

Every workflow step is a function here with a command-line entry in `ldct.cli`, so it runs
by hand (`python -m ldct <command>`) and is tested without Snakemake.
"""

__version__ = "0.1.0"
