# Subject-level split, computed by the same library function the Snakefile used to plan jobs.


rule split:
    input:
        preset=[preset_file(config["split"]["preset"])] if config["split"]["method"] == "preset" else [],
    output:
        str(RP.splits),
    log:
        str(RP.log("split")),
    params:
        settings=section_flags("split", config["split"]),
        seed=config["seed"],
        subjects=SUBJECTS,
    conda:
        CONDA_ENV
    shell:
        "python -m ldct split --seed {params.seed} {params.settings} --out {output:q} {params.subjects:q} > {log:q} 2>&1"
