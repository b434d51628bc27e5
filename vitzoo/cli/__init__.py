"""Command-line programs: training (`vitzoo-train`, `train_imagenet.py`) and evaluation
(`vitzoo-validate`, `tools/validate.py`).

Each job has its own small module: `train_args` (flags and typed YAML recipes), `recipes`
(finding a recipe by name), `checkpoints` (crash-safe saves, exact-resume state, RNG),
`run_dir` (run folders, summary and step logs), `data` (shared class map, corrupt-image
skipping, pre-flight), `engine` (the train/eval loops), `outputs` (TensorBoard, curves,
safetensors), `train` and `validate` (the programs).
"""
