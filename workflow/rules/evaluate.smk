# Denoise the test subjects and score every experiment (and the LDCT input) per slice.


rule denoise:
    input:
        model=str(RP.model("{experiment}")),
        splits=str(RP.splits),
        data=nifti_files(SPLITS["test"]),
        code=code_files("evaluate"),
    output:
        [str(RP.denoised("{experiment}", s)) for s in SPLITS["test"]],
    log:
        str(RP.log("denoise/{experiment}")),
    params:
        nifti=nifti_root,
        outdir=lambda wc, output: str(Path(output[0]).parent),
        device=config["train"]["device"],
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS),
    threads: MAX_THREADS
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    shell:
        "python -m ldct denoise --threads {threads} --model {input.model:q} --nifti {params.nifti:q} "
        "--splits {input.splits:q} --outdir {params.outdir:q} --device {params.device} > {log:q} 2>&1"



# The segmenter's labels of the NDCT test volumes, the reference of every row's Dice: made once,
# where evaluate segments the outputs (device auto, as evaluate: a GPU where one is visible), not on
# segmenter.device: labels of the two sides made on two devices (GPU TF32 vs CPU) would differ.
rule segment_ndct:
    input:
        segmenter=str(RP.segmenter),
        splits=str(RP.splits),
        data=nifti_files(SPLITS["test"]),
        code=code_files("evaluate"),
    output:
        [str(RP.ndct_segmentation(s)) for s in SPLITS["test"]],
    log:
        str(RP.log("segment_ndct")),
    params:
        nifti=nifti_root,
        outdir=lambda wc, output: str(Path(output[0]).parent),
        device="auto",
    threads: 1
    resources:
        gpu=1,  # where one is visible: one GPU job at a time on a workstation
    conda:
        CONDA_ENV
    shell:
        "python -m ldct segment-ndct --threads {threads} --nifti {params.nifti:q} --splits {input.splits:q} "
        "--segmenter {input.segmenter:q} --outdir {params.outdir:q} --device {params.device} > {log:q} 2>&1"


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        metrics=str(RP.metrics("{experiment}")),
        dice=str(RP.dice("{experiment}")),
    log:
        str(RP.log("evaluate/{experiment}")),
    params:
        nifti=nifti_root,
        denoised=lambda wc, input: f"--denoised {shlex.quote(str(Path(input.denoised[0]).parent))}" if wc.experiment != LDCT else "",
        ndct_seg=lambda wc, input: str(Path(input.ndct_seg[0]).parent),
    wildcard_constraints:
        experiment="|".join(ROWS),
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "python -m ldct evaluate --threads {threads} --experiment {wildcards.experiment:q} --nifti {params.nifti:q} "
        "--splits {input.splits:q} {params.denoised} --segmenter {input.segmenter:q} --ndct-seg {params.ndct_seg:q} "
        "--out {output.metrics:q} --dice {output.dice:q} > {log:q} 2>&1"


# Dose sweep: the experiments trained at the first dose fraction, applied at every extra one
# (one job per experiment covers all extra doses; each dose has its own output folder).
if DOSE_SWEEP:

    rule denoise_doses:
        input:
            model=str(RP.model("{experiment}")),
            splits=str(RP.splits),
            data=nifti_files(SPLITS["test"]),
            code=code_files("evaluate"),
            low=[str(RP.low_dose(s, f)) for f in DOSES[1:] for s in SPLITS["test"]],
        output:
            [str(RP.dose_denoised(t, "{experiment}", s)) for t in EXTRA_DOSES for s in SPLITS["test"]],
        log:
            str(RP.log("denoise_doses/{experiment}")),
        params:
            nifti=nifti_root,
            outdirs=lambda wc: [str(RP.dose_denoised(t, wc.experiment)) for t in EXTRA_DOSES],
            lows=[low_dose_name(f) for f in DOSES[1:]],
            device=config["train"]["device"],
        wildcard_constraints:
            experiment="|".join(EXPERIMENTS),
        threads: MAX_THREADS
        resources:
            gpu=1,
        conda:
            CONDA_ENV
        shell:
            "python -m ldct denoise --threads {threads} --model {input.model:q} --nifti {params.nifti:q} "
            "--splits {input.splits:q} --low {params.lows:q} --outdir {params.outdirs:q} --device {params.device} > {log:q} 2>&1"

    rule evaluate_doses:
        input:
            unpack(dose_evaluate_inputs),
        output:
            [str(RP.dose_metrics(t, "{experiment}")) for t in EXTRA_DOSES],
        log:
            str(RP.log("evaluate_doses/{experiment}")),
        params:
            nifti=nifti_root,
            lows=[low_dose_name(f) for f in DOSES[1:]],
            denoised=lambda wc: ("--denoised " + " ".join(shlex.quote(str(RP.dose_denoised(t, wc.experiment))) for t in EXTRA_DOSES)
                                 if wc.experiment != LDCT else ""),
        wildcard_constraints:
            experiment="|".join(ROWS),
        threads: 1
        conda:
            CONDA_ENV
        shell:
            "python -m ldct evaluate --threads {threads} --experiment {wildcards.experiment:q} --nifti {params.nifti:q} "
            "--splits {input.splits:q} {params.denoised} --low {params.lows:q} --out {output:q} > {log:q} 2>&1"
