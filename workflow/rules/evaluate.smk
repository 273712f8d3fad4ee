# Denoise the test subjects and score every experiment (and the LDCT input) per slice.


rule denoise:
    input:
        model=str(RP.model("{experiment}")),
        splits=str(RP.splits),
        data=nifti_files(SPLITS["test"]),
    output:
        [str(RP.denoised("{experiment}", s)) for s in SPLITS["test"]],
    log:
        str(RP.log("denoise/{experiment}")),
    params:
        nifti=nifti_root,
        outdir=lambda wc, output: str(Path(output[0]).parent),
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS),
    threads: MAX_THREADS
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    shell:
        "python -m ldct denoise --threads {threads} --model {input.model:q} --nifti {params.nifti:q} "
        "--splits {input.splits:q} --outdir {params.outdir:q} > {log:q} 2>&1"



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
    wildcard_constraints:
        experiment="|".join(ROWS),
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "python -m ldct evaluate --threads {threads} --experiment {wildcards.experiment:q} --nifti {params.nifti:q} "
        "--splits {input.splits:q} {params.denoised} --segmenter {input.segmenter:q} "
        "--out {output.metrics:q} --dice {output.dice:q} > {log:q} 2>&1"
