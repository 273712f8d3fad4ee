# The frozen anatomical prior: pre-train the segmentation U-Net (or load given weights).


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
        gpu=1,
    conda:
        CONDA_ENV
    shell:
        "python -m ldct pretrain-segmenter --threads {threads} --seed {params.seed} {params.settings} "
        "--nifti {params.nifti:q} --splits {input.splits:q} --out {output.model:q} --history {output.history:q} "
        "--checkpoints {params.checkpoints:q} > {log:q} 2>&1"
