"""Build hook: the repository's top-level configs/ ship inside the wheel as pcdms_aug/configs, where
pcdms_aug.config.loading finds them once installed. Everything else is declared in setup.cfg."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the repository's configs/ in place
        target = Path(self.build_lib) / "pcdms_aug" / "configs"
        for src in sorted((HERE / "configs").rglob("*.yaml")):
            dst = target / src.relative_to(HERE / "configs")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


setup(cmdclass={"build_py": BuildPyWithConfigs})
