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
        nifti=str(RP.nifti()),
        outdir=lambda wc: str(RP.denoised(wc.experiment)),
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS),
    threads: workflow.cores
    resources:
        gpu=1,
    shell:
        "{LDCT_CMD} denoise --threads {threads} --model {input.model:q} --nifti {params.nifti:q} "
        "--splits {input.splits:q} --outdir {params.outdir:q} > {log:q} 2>&1"


def evaluate_inputs(wc):
    inp = {"splits": str(RP.splits), "segmenter": str(RP.segmenter),
           "data": nifti_files(SPLITS["test"], labels=SYNTHETIC)}
    if wc.experiment != LDCT:
        inp["denoised"] = [str(RP.denoised(wc.experiment, s)) for s in SPLITS["test"]]
    return inp


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        metrics=str(RP.metrics("{experiment}")),
        dice=str(RP.dice("{experiment}")),
    log:
        str(RP.log("evaluate/{experiment}")),
    params:
        nifti=str(RP.nifti()),
        denoised=lambda wc: str(RP.denoised(wc.experiment)),
    wildcard_constraints:
        experiment="|".join(ROWS),
    threads: 1
    shell:
        "{LDCT_CMD} evaluate --threads {threads} --experiment {wildcards.experiment:q} --nifti {params.nifti:q} "
        "--splits {input.splits:q} --denoised {params.denoised:q} --segmenter {input.segmenter:q} "
        "--out {output.metrics:q} --dice {output.dice:q} > {log:q} 2>&1"
