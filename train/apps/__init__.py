"""patchpack.train.apps: what a user runs on top of a trained model.

    generate.py  load a run (EMA or raw weights, its stored config), sample many prompts x sizes
                 in one packed pass per Euler step, write the files       (`patchpack generate`)
    gallery.py   mp4/gif/png per clip, a contact sheet and an HTML page
    evaluate.py  read a synthetic caption's attributes back from pixels   (`patchpack eval`)
    demo.py      synth -> train -> generate -> evaluate, on a CPU          (`patchpack demo`)
"""

from .demo import DemoOptions, run_demo
from .evaluate import evaluate, evaluate_dir, format_report, parse_caption, read_attributes, score
from .generate import LoadedRun, Request, load_run, parse_size, requests, sample, write_outputs

__all__ = [
    "DemoOptions",
    "LoadedRun",
    "Request",
    "evaluate",
    "evaluate_dir",
    "format_report",
    "load_run",
    "parse_caption",
    "parse_size",
    "read_attributes",
    "requests",
    "run_demo",
    "sample",
    "score",
    "write_outputs",
]
