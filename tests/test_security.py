"""Hostile input, by class: nothing read from a file is executed, names are never paths, outputs stay under
--out. See docs/security.md for what each promise means."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [ROOT / "pcdms_aug", ROOT / "reid"]


def _calls(name: str):
    for pkg in PACKAGES:
        for file in sorted(pkg.rglob("*.py")):
            tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    f = node.func
                    full = ast.unparse(f)
                    if full == name or full.endswith("." + name.split(".")[-1]) and name.split(".")[0] in full:
                        yield file.relative_to(ROOT), node


def test_every_torch_load_in_the_package_is_weights_only_true():
    found = list(_calls("torch.load"))
    assert found, "the scan finds no torch.load at all: it is broken"
    for file, node in found:
        kw = {k.arg: k.value for k in node.keywords}
        assert "weights_only" in kw and isinstance(kw["weights_only"], ast.Constant) \
            and kw["weights_only"].value is True, f"{file}:{node.lineno}: torch.load without weights_only=True"


def test_no_pickle_marshal_or_eval_on_file_contents():
    for bad in ("pickle.load", "pickle.loads", "marshal.loads", "yaml.load", "yaml.unsafe_load", "eval", "exec",
                "numpy.load", "np.load"):
        for file, node in _calls(bad):
            if ast.unparse(node.func) != bad:
                continue
            kw = {k.arg: k.value for k in node.keywords}
            if bad in ("np.load", "numpy.load") and isinstance(kw.get("allow_pickle"), ast.Constant) \
                    and kw["allow_pickle"].value is False:
                continue
            raise AssertionError(f"{file}:{node.lineno}: {bad} on data")
