# The frozen anatomical prior: pre-train the segmentation U-Net (or load given weights).

# Given weights are only loaded (and, on labelled synthetic data, scored): seconds on a CPU. The
# job then runs where Snakemake runs, without a GPU, instead of queueing for a GPU node under
# SLURM (the profile books GPU partition time for the pre-training).
GIVEN_SEGMENTER = bool(config["segmenter"]["weights"])
if GIVEN_SEGMENTER:

    localrules:
        pretrain_segmenter,


rule pretrain_segmenter:
    input:
        splits=str(RP.splits),
        # labels: to pre-train, or to score given weights on the validation subjects (synthetic)
        data=nifti_files(SPLITS["train"] + SPLITS["val"],
                         labels=not config["segmenter"]["weights"] or config["dataset"]["source"] == "synthetic"),
        weights=config["segmenter"]["weights"] or [],
    output:
        model=str(RP.segmenter),
        history=str(RP.segmenter_history),
    log:
        str(RP.log("pretrain_segmenter")),
    params:
        settings=section_flags("segmenter", config["segmenter"]),
        seed=config["seed"],
        nifti=nifti_root,
        checkpoints=str(RP.segmenter_checkpoints),
    threads: MAX_THREADS
    resources:
        gpu=0 if GIVEN_SEGMENTER else 1,
    conda:
        CONDA_ENV
    shell:
        "python -m ldct pretrain-segmenter --threads {threads} --seed {params.seed} {params.settings} "
        "--nifti {params.nifti:q} --splits {input.splits:q} --out {output.model:q} --history {output.history:q} "
        "--checkpoints {params.checkpoints:q} > {log:q} 2>&1"
