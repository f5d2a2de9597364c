"""Build step for the wheel: ship the default weights inside the package.

Everything else is in pyproject.toml. `minilens` with no --model reads weights/shakespeare-llama;
a wheel has no weights/ folder beside the package, so the build copies the shipped folders to
minilens/_weights/ (about 8 MB each). An editable install skips the copy and
minilens/loading/checkpoint.py's shipped_path() finds the repository's weights/ folder instead.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("shakespeare-llama", "shakespeare-gpt2")
# The files a Hugging Face folder needs to load (the model card and training log stay in the repo).
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "generation_config.json", "README.md", "training_info.json")


class build_py_with_weights(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in SHIPPED:
            src = ROOT / "weights" / name
            if not (src / "config.json").is_file():
                raise SystemExit(f"setup.py: {src} has no config.json; "
                                 f"the default weights must be present to build a wheel.")
            dst = Path(self.build_lib) / "minilens" / "_weights" / name
            dst.mkdir(parents=True, exist_ok=True)
            for f in FILES:
                if (src / f).is_file():
                    shutil.copyfile(src / f, dst / f)


setup(cmdclass={"build_py": build_py_with_weights})
