"""`make reproduce`: every experiment whose data and weights are present, then one report.

The embedded experiments (digits, digits_lipschitz, synthetic_exact, eps_controlled) always
run; the Fashion-MNIST ones when its files are installed. A paper-scale experiment runs when
its dataset folder and weight file are present;
otherwise its line says what is missing and the exact command to run once they are.
Everything lands in one dated folder (the artefact an appendix would cite), ending with
gmcert-report's combined tables.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torchvision

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Experiment:
    name: str
    sweep: bool
    needs: list[tuple[str, Path]] = field(default_factory=list)  # (what, path)


def data_dir() -> Path:
    return Path(os.environ.get("GMCERT_DATA_DIR", ROOT / "data"))


def weight_file(weights) -> Path:
    from gmcert.encoders.weights import torchvision_weights_path

    return torchvision_weights_path(weights.url)


def fashion_mnist_folder() -> Path:
    """The first folder holding the four Fashion-MNIST files, in the order the config tries."""
    from gmcert.data.idx import check_idx_present

    candidates = [data_dir() / "fashion_mnist", Path("/usr/share/datasets/fashion-mnist")]
    for folder in candidates:
        try:
            check_idx_present(name="fashion_mnist", root=folder)
            return folder
        except FileNotFoundError:
            pass
    return candidates[0]


def experiments() -> list[Experiment]:
    models = torchvision.models
    fashion = ("Fashion-MNIST (apt-get install dataset-fashion-mnist)", fashion_mnist_folder())
    cifar = ("CIFAR-10 (python version)", data_dir() / "cifar10" / "cifar-10-batches-py")
    imagenet = ("ImageNet train/ and val/ folders", data_dir() / "imagenet" / "val")
    vit = ("ViT-B/16 weights", weight_file(models.ViT_B_16_Weights.DEFAULT))
    resnet = ("ResNet-50 weights", weight_file(models.ResNet50_Weights.DEFAULT))
    # The dds experiments' denoiser.weights folders (configs/experiment/*_dds.yaml).
    denoisers = data_dir() / "denoisers"
    ddpm_cifar = (
        "diffusers folder of google/ddpm-cifar10-32 (save_pretrained)",
        denoisers / "ddpm-cifar10-32",
    )
    ddpm_imagenet = (
        "diffusers folder of an unconditional 256 px ImageNet diffusion model",
        denoisers / "imagenet-256-uncond",
    )
    return [
        Experiment("digits", sweep=False),
        Experiment("digits_lipschitz", sweep=False),
        Experiment("fashion_mnist", sweep=True, needs=[fashion]),
        Experiment("fashion_mnist_lipschitz", sweep=False, needs=[fashion]),
        Experiment("fashion_mnist_cnn", sweep=False, needs=[fashion]),
        Experiment("synthetic_exact", sweep=True),
        Experiment("eps_controlled", sweep=True),
        Experiment("cifar10_vit", sweep=True, needs=[cifar, vit]),
        Experiment("cifar10_resnet50", sweep=True, needs=[cifar, resnet]),
        Experiment("imagenet_vit", sweep=True, needs=[imagenet, vit]),
        Experiment("cifar10_vit_dds", sweep=True, needs=[cifar, vit, ddpm_cifar]),
        Experiment("imagenet_vit_dds", sweep=True, needs=[imagenet, vit, ddpm_imagenet]),
    ]


def command(exp: Experiment, out: Path, extra: list[str]) -> list[str]:
    folder = f"hydra.sweep.dir={out / exp.name}" if exp.sweep else f"hydra.run.dir={out / exp.name}"
    return ["gmcert-run", *(["-m"] if exp.sweep else []), f"experiment={exp.name}", folder, *extra]


def main(argv: list[str]) -> int:
    out = ROOT / "outputs" / "reproduce" / f"{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
    out.mkdir(parents=True)
    bin_dir = Path(sys.executable).parent
    lines = [f"# gmcert reproduce, {datetime.datetime.now():%Y-%m-%d %H:%M}", ""]
    failed = 0
    for exp in experiments():
        missing = [f"{what} at {path}" for what, path in exp.needs if not path.exists()]
        cmd = command(exp, out, argv)
        if missing:
            print(f"skipped {exp.name}: missing {'; '.join(missing)}")
            print(f"    once present, run: {' '.join(cmd)}")
            lines.append(
                f"- {exp.name}: skipped, missing {'; '.join(missing)}. Run: `{' '.join(cmd)}`"
            )
            continue
        print(f"running {exp.name}: {' '.join(cmd)}", flush=True)
        cmd[0] = str(bin_dir / cmd[0])
        ok = subprocess.run(cmd, cwd=ROOT).returncode == 0
        failed += not ok
        lines.append(
            f"- {exp.name}: {'ran' if ok else 'FAILED'} (`{' '.join(command(exp, out, argv))}`)"
        )
    report = subprocess.run(
        [str(bin_dir / "gmcert-report"), str(out), "--out", str(out / "report")], cwd=ROOT
    )
    (out / "README.md").write_text("\n".join(lines) + "\n\nCombined tables: report/\n")
    print(f"\nreproduce folder: {out}")
    return 1 if failed or report.returncode else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
