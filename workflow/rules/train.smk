# Train one experiment. Checkpoints live outside the outputs, so a killed job resumes.


rule train:
    input:
        splits=str(RP.splits),
        data=nifti_files(SPLITS["train"] + SPLITS["val"]),
        segmenter=lambda wc: str(RP.segmenter) if needs_segmenter(wc.experiment) else [],
        source=lambda wc: SPECS[wc.experiment].source_files(),
    output:
        model=str(RP.model("{experiment}")),
        history=str(RP.history("{experiment}")),
        lr_sweep=str(RP.lr_sweep("{experiment}")),
    log:
        str(RP.log("train/{experiment}")),
    params:
        spec=lambda wc: SPECS[wc.experiment].to_json(),
        nifti=nifti_root,
        checkpoints=lambda wc: str(RP.checkpoints(wc.experiment)),
        segmenter=lambda wc, input: f"--segmenter {shlex.quote(input.segmenter)}" if input.segmenter else "",
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS),
    threads: MAX_THREADS
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    shell:
        "python -m ldct train --threads {threads} --spec {params.spec:q} --nifti {params.nifti:q} "
        "--splits {input.splits:q} --out {output.model:q} --history {output.history:q} "
        "--checkpoints {params.checkpoints:q} {params.segmenter} > {log:q} 2>&1"
