"""The evaluation harness: score a model, or outputs made elsewhere, on a suite.

Suites are YAML files: the package's own (`maskgrpo/suites/`, by name: `gsm8k`), those in the
folders of `$MASKGRPO_SUITES` (also by name), or any file by its path.

A suite (YAML, schema `Suite`) names its data, the fields that hold the prompt and the gold
answer, the metrics (registry specs), the sampler that generates for it and how many samples
per prompt. Two ways in:

- `--model PRESET_OR_PATH`: generate with the suite's sampler, then score (text suites; image
  suites also need `image_tokenizer`, and keep the generated images in `<out>/images`);
- `--outputs PATH`: score existing outputs only. Text: a JSONL file with one object per line
  holding `completion` and the gold `answer` (optional `prompt`/`question`). Images: GenEval's
  folder layout, `<index>/metadata.jsonl` (one GenEval row) + `<index>/samples/*.png`.

Both write into the output folder: `results.json` (`{"suite", "metrics", "n", "skipped",
"seconds", "samples_per_second", ...}`), `samples.jsonl` (one verdict per sample, with the
extracted answer or the detections and the reason a check failed) and a report for people:
`failures.md` (text) or `grid.png` + `report.html` (images).

From Python, in one line::

    from maskgrpo.eval import evaluate_suite
    results = evaluate_suite("gsm8k", outputs="completions.jsonl")   # or a suite file's path

Bad input (missing file or folder, malformed JSONL line, an unknown tag) raises `MaskGRPOError`
naming the file and line; with `skip_bad` such a row is skipped instead and counted in
`results.json` (`skipped`). An image that cannot be read (not a regular file, not an image, more
pixels than the suite's `max_image_pixels`, checked before decoding) is an error too; with
`skip_bad` it is a failed sample (score 0, its reason in `samples.jsonl`), with
`exclude_unreadable` it is left out of the score; `results.json` counts both (`unreadable`,
`excluded`) and the reports say so.

One module per concern: `suite` (schema, finding and loading a suite), `outputs` (JSONL, GenEval
rows and folders, the suite's prompts), `generate` (`--model`), `score` (the suite's metrics),
`reports` (failures.md, grid.png, report.html, the printed table), `harness` (the entry points).
"""

from .harness import DEFAULT_BATCH_SIZE, evaluate_suite, run_eval_cli
from .outputs import save_geneval_folder, validate_geneval_row
from .suite import Suite, SuiteFields, bundled_suites, check_suite, load_suite

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Suite",
    "SuiteFields",
    "bundled_suites",
    "check_suite",
    "evaluate_suite",
    "load_suite",
    "run_eval_cli",
    "save_geneval_folder",
    "validate_geneval_row",
]
