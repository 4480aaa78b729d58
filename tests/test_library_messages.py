"""The library names its own arguments and fields in its messages, never command-line flags; the
command line adds each field's flag (``cli/options.py`` ``FLAGS``, ``S2SWError.with_flags``).

The source scan covers the library packages outside ``cli/`` (``serve/`` is checked by its
owner's tests); the behavioural tests make the same mistake
through the Python API (the field) and the command line (the flag)."""

import ast
import re
from pathlib import Path

import pytest

from s2swclip.cli.main import build_parser
from s2swclip.cli.options import FLAGS, flag_message
from s2swclip.errors import S2SWError
from helpers import assert_user_error, run_cli, write_png  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src" / "s2swclip"
SCANNED = ("model", "data", "training", "eval", "inference", "viz", "demo.py", "fileio.py", "errors.py", "specs.py",
           "arrays.py", "progress.py", "api.py", "deploy", "profiles")
FLAG = re.compile(r"(?<![\w-])--[a-z]")
# (file, text) of strings that may hold a flag, each with why
ALLOWED = {
    ("inference/ray_cluster.py", "ray start --head"),  # Ray's own command line, which the user runs to start a cluster
    ("demo.py", "s2swclip train --data"),  # REAL_WORKFLOW: the demo shows the command lines of the real workflow
    ("inference/watch/ledger.py", "-- 0 once --sort moved"),  # a comment inside the ledger's SQL schema
}


def _library_files():
    for name in SCANNED:
        path = SRC / name
        yield from sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _docstrings(tree) -> set[int]:
    """ids of the docstring nodes (module, class, function): they may describe the command line."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _strings(tree):
    """(line, text) of every string constant and every f-string's literal text, docstrings aside."""
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            yield node.lineno, text
            skip.update(id(v) for v in node.values)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def _offenders(path: Path) -> list[str]:
    rel = path.relative_to(SRC).as_posix()
    found = []
    for line, text in _strings(ast.parse(path.read_text(encoding="utf-8"))):
        if FLAG.search(text) and not any(rel == f and allowed in text for f, allowed in ALLOWED):
            found.append(f"{rel}:{line}: {text[:100]!r}")
    return found


def test_library_messages_name_no_flags():
    """Every string of the library (messages, log lines, hints built in pieces), docstrings aside,
    is free of command-line flags."""
    files = list(_library_files())
    assert len(files) > 60 and any(f.name == "factory.py" for f in files)  # the scan does see the library
    offenders = [o for f in files for o in _offenders(f)]
    assert not offenders, "library strings that name command-line flags:\n" + "\n".join(offenders)


def test_the_scan_finds_a_flag_in_a_message():
    """The scan is not blind: a flag in a raise, an f-string or a log call is reported, one in a
    docstring is not."""
    source = ('"""Docstring: s2swclip predict --out DIR."""\n'
              'def f(x):\n'
              '    """--image-size in a docstring is fine."""\n'
              '    log.warning("use --batch-size %d", x)\n'
              '    raise S2SWError(f"bad {x}; pass --image-size N")\n')
    tree = ast.parse(source)
    texts = [(line, text) for line, text in _strings(tree) if FLAG.search(text)]
    assert sorted(line for line, _ in texts) == [4, 5], texts


def test_every_field_the_library_names_has_an_entry_in_flags():
    """Each field named in ``fields=[...]`` by the library is in the one table (its flag, or None
    for a field no flag sets), and each flag of the table is an option of some command."""
    named = {}
    for path in _library_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "fields" and isinstance(kw.value, (ast.List, ast.Tuple)):
                        for el in kw.value.elts:
                            if isinstance(el, ast.Constant):
                                named.setdefault(el.value, f"{path.relative_to(SRC)}:{node.lineno}")
    assert {"image_size", "out_dir", "shots", "ray_address", "cache_features"} <= set(named)
    missing = {name: where for name, where in named.items() if name not in FLAGS}
    assert not missing, f"fields without an entry in cli/options.py FLAGS: {missing}"
    parser = build_parser()
    options = {opt for sub in parser._subparsers._group_actions[0].choices.values()  # noqa: SLF001
               for action in sub._actions for opt in action.option_strings}  # noqa: SLF001
    unknown = {field: flag for field, flag in FLAGS.items() if flag is not None and flag not in options}
    assert not unknown, f"FLAGS entries that no command has: {unknown}"


# ------------------------------------------------------- one mistake, through the API and the CLI
def test_image_size_beyond_the_position_table(capsys, tmp_path):
    import s2swclip

    with pytest.raises(S2SWError) as e:
        s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=100000, untrained_ok=True)
    msg = str(e.value)
    assert msg.startswith("image_size 100000 gives a 7142x7142 patch grid") and "--" not in msg, msg
    assert e.value.fields == ("image_size",) and msg.endswith("use at most image_size 1344")
    write_png(tmp_path / "a.png")
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--quiet",
                           "--backbone", "S2SW-Tiny-24L", "--weights", "none", "--image-size", "100000")
    assert_user_error(code, err, "error: image_size 100000 gives a 7142x7142 patch grid",
                      "S2SW-Tiny-24L (--image-size); use at most image_size 1344")


def test_output_folder_that_is_a_file(capsys, tmp_path):
    from s2swclip.fileio import check_output_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(S2SWError) as e:
        check_output_dir(tmp_path / "file")
    assert str(e.value) == f"out_dir {tmp_path / 'file'} is an existing file, not a folder: choose a folder"
    assert flag_message(e.value) == (f"out_dir {tmp_path / 'file'} is an existing file, not a folder (--out): "
                                     "choose a folder")
    with pytest.raises(S2SWError) as e:
        check_output_dir(tmp_path / "file", "cache_features")
    assert flag_message(e.value).startswith(f"cache_features {tmp_path / 'file'} is an existing file, not a "
                                            "folder (--cache-features): ")
    code, _, err = run_cli(capsys, "train", "--data", str(tmp_path), "--out", str(tmp_path / "file"),
                           "--backbone", "S2SW-Tiny-24L", "--weights", "none")
    assert_user_error(code, err, f"out_dir {tmp_path / 'file'} is an existing file, not a folder (--out)")


def test_references_fewer_than_shots(tmp_path):
    from s2swclip.inference.references import read_reference_images

    for i in range(3):
        write_png(tmp_path / f"{i}.png", seed=i)
    with pytest.raises(S2SWError) as e:
        read_reference_images(tmp_path, 32, shots=5)
    assert str(e.value) == f"reference {tmp_path} holds 3 images, fewer than shots 5"
    assert flag_message(e.value) == f"reference {tmp_path} holds 3 images, fewer than shots 5 (--reference, --shots)"
    with pytest.raises(S2SWError) as e:
        read_reference_images(tmp_path, 32, max_references=2)
    assert "--" not in str(e.value)
    assert flag_message(e.value) == (f"reference {tmp_path} holds 3 images, more than max_references 2 "
                                     "(--reference, --max-references); pick fewer with shots K (--shots); a coreset "
                                     "keeps memory down afterwards (--coreset); or raise max_references")


def test_ray_settings():
    from s2swclip.inference.ray_cluster import _parse_address, worker_error
    from s2swclip.inference.ray_engine import _worker_spec
    from s2swclip.inference.spec import ScorerSpec

    with pytest.raises(S2SWError) as e:
        _parse_address("10.0.0.5")
    assert str(e.value).startswith("ray_address '10.0.0.5' is not HOST:PORT, ray://HOST:PORT or auto; use ")
    assert flag_message(e.value).startswith("ray_address '10.0.0.5' is not HOST:PORT, ray://HOST:PORT or auto "
                                            "(--ray-address); use ")
    # an error a worker raised keeps its fields (the CLI still shows the flags)
    chained = RuntimeError("task failed")
    chained.__cause__ = e.value
    wrapped = worker_error(chained)
    assert wrapped.fields == ("ray_address",) and "(--ray-address)" in flag_message(wrapped)
    spec = ScorerSpec.detector("S2SW-Tiny-24L", None, device="cuda:1")
    with pytest.raises(S2SWError) as e:
        _worker_spec(spec, 1.0)
    assert flag_message(e.value) == ("device cuda:1 (--device): Ray assigns each worker its GPUs, gpus_per_worker "
                                     "(--gpus-per-worker); use device cuda (--device)")


def test_exported_model_and_profile_settings(capsys, tmp_path):
    """deploy/ and profiles/ name their fields too; the command line shows the flags."""
    from s2swclip.deploy.runtime import load_exported
    from s2swclip.profiles.store import ProfileStore

    missing = tmp_path / "nothing"
    with pytest.raises(S2SWError) as e:
        load_exported(missing)
    assert str(e.value).startswith(f"model {missing}: no such folder; ") and e.value.fields == ("model",)
    with pytest.raises(S2SWError) as e:
        load_exported(missing, inference_timeout=0)
    assert flag_message(e.value) == ("inference_timeout must be a positive number of seconds, got 0 "
                                     "(--inference-timeout)")
    write_png(tmp_path / "a.png")
    code, _, err = run_cli(capsys, "predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                           "--model", str(missing))
    assert_user_error(code, err, f"error: model {missing} (--model): no such folder; ")
    with pytest.raises(S2SWError) as e:
        ProfileStore(tmp_path / "p", max_profiles=0)
    assert flag_message(e.value) == "max_profiles must be at least 1, got 0 (--max-profiles)"
    with pytest.raises(S2SWError) as e:
        ProfileStore(tmp_path / "a.png")
    assert flag_message(e.value) == f"profiles {tmp_path / 'a.png'} is a file, not a folder (--profiles)"
