"""benchmarks/gpu_suite.sh in its CPU mode: every row of the table is measured, with finite positive numbers, and the
sampling checks hold (the fast path gives the plain loop's images)."""

from __future__ import annotations

import math
import os
import subprocess

from conftest import ROOT

SAMPLING_CASES = ("bare UNet x steps", "stock DDPMPipeline", "hf_ddpm plain loop", "hf_ddpm DDPMPipeline",
                  "hf_ddpm DDPMPipeline, CPU generator")
COMPILED_SAMPLING = "hf_ddpm DDPMPipeline + compile reduce-overhead"
EXPECTED_ROWS = sorted(
    [("training", loop, precision, "4") for precision in ("fp32", "bf16")
     for loop in ("train.py", "diffusers example loop", "bare step")]
    + [("training", f"{loop}, channels_last + compile", precision, "4") for precision in ("fp32", "bf16")
       for loop in ("train.py", "bare step")]
    + [("256x256", "bare step", "bf16", "4"), ("256x256", "bare step, gradient checkpointing", "bf16", "4")]
    + [("sampling", case, "fp32", str(batch)) for batch in (1, 2, 4) for case in (*SAMPLING_CASES, COMPILED_SAMPLING)]
)


def test_the_cpu_mode_measures_every_row(tmp_path):
    # torch.compile itself is tested in test_fast_sampling.py; here its compilations (minutes on this CPU) are
    # switched off with torch's own variable, so the compiled rows run their code paths eagerly.
    env = {**os.environ, "TORCH_COMPILE_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--cpu"], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    lines = finished.stdout.splitlines()
    assert lines[0].startswith("hf-ddpm benchmark suite on CPU") and "TORCH_COMPILE_DISABLE=1" in finished.stdout
    header = lines.index("| section | case | precision | batch | images/s | ms/step | peak MiB | note |")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[header + 2:]
            if line.startswith("| ")]
    assert sorted(tuple(row[:4]) for row in rows) == EXPECTED_ROWS
    for section, case, _, _, images_per_second, step_ms, peak_mib, note in rows:
        for value in (float(images_per_second), float(step_ms)):
            assert math.isfinite(value) and value > 0, (section, case)
        assert peak_mib == "n/a"  # torch keeps no peak of CPU memory
        assert not note.startswith(("failed", "skipped")), (section, case, note)
    checks = next(line for line in lines if line.startswith("checks: "))
    assert checks.count("fast path == plain loop (bitwise): True") == 3 and "False" not in checks
