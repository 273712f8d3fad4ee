# Tables, figures and the Snakemake report. `snakemake paper` redraws them from trained models.


rule complexity:
    input:
        source=model_sources(complexity_models().values()),
        code=code_files("complexity", "tables"),
    output:
        [report_table("table1_complexity", e) for e in ("csv", "md", "tex")],
    log:
        str(RP.log("complexity")),
    params:
        specs=as_json(complexity_models()),
        prefix=lambda wc, output: str(Path(output[0]).with_suffix("")),
        size=config["complexity"]["size"],
        repeats=config["complexity"]["repeats"],
    threads: MAX_THREADS
    resources:
        gpu=1,  # its GPU latency column, where a GPU is visible, is timed with no training job beside it
    conda:
        CONDA_ENV
    shell:
        "python -m ldct complexity --threads {threads} --models {params.specs:q} --out-prefix {params.prefix:q} "
        "--size {params.size} --repeats {params.repeats} > {log:q} 2>&1"


rule tables:
    input:
        metrics=[str(RP.metrics(e)) for e in ROWS],
        code=code_files("tables"),
        dice=[str(RP.dice(e)) for e in ROWS],
        histories=[str(RP.history(e)) for e in EXPERIMENTS],
        sweeps=[str(RP.lr_sweep(e)) for e in EXPERIMENTS],
        models=[str(RP.model(e)) for e in EXPERIMENTS],  # the commit and machine each was trained with
        splits=str(RP.splits),  # Table 2's caption says when the test subjects are the validation ones
    output:
        [report_table(t, e) for t in TABLES[1:] for e in ("csv", "md", "tex")],
        stats=report_csv("stats", "statistics", "Statistical tests"),
        dice_stats=report_csv("dice_stats", "statistics", "Statistical tests"),
        training=report_csv("training"),
        effect=[report_table("anatomical_effect", e) for e in ("csv", "md")] if ANA_PAIRS else [],
        stats_truth=report_csv("stats_vs_truth", "statistics", "Statistical tests") if SYNTHETIC else [],
    log:
        str(RP.log("tables")),
    params:
        root=results_root,
        rows=ROWS,
        seed=config["seed"],
        models=as_json({"experiments": {e: x["model"] for e, x in config["experiments"].items()},
                        "segmenter": config["segmenter"]}),
        train=section_flags("train", config["train"], TABLE_TRAIN_KEYS),
        own_train=as_json({e: x["train"] for e, x in config["experiments"].items() if x.get("train")}),
    conda:
        CONDA_ENV
    shell:
        "python -m ldct tables --root {params.root:q} --seed {params.seed} {params.train} "
        "--experiments {params.rows:q} --models {params.models:q} --own-train {params.own_train:q} > {log:q} 2>&1"


rule figures:
    input:
        metrics=[str(RP.metrics(e)) for e in ROWS],
        histories=[str(RP.history(e)) for e in EXPERIMENTS],
        training=str(RP.table("training")),
        code=code_files("figures"),
        denoised=[str(RP.denoised(e, SPLITS["test"][0])) for e in EXPERIMENTS],
        segmenter=str(RP.segmenter),
        splits=str(RP.splits),
        data=nifti_files(SPLITS["test"][:1], labels=SYNTHETIC),  # the first test subject's volumes
        phantom=str(RP.phantom(SPLITS["test"][0]) / "phantom.nii.gz") if SYNTHETIC else [],
    output:
        [report_figure(f) for f in FIGURES],
        pdfs=[str(RP.figure(f, "pdf")) for f in FIGURES],
    log:
        str(RP.log("figures")),
    params:
        root=results_root,
        rows=ROWS,
    threads: MAX_THREADS
    conda:
        CONDA_ENV
    shell:
        "python -m ldct figures --threads {threads} --root {params.root:q} "
        "--experiments {params.rows:q} > {log:q} 2>&1"


if DOSE_SWEEP:

    rule dose_sweep:
        input:
            metrics=sweep_metric_files(),
            training=str(RP.table("training")),  # the convergence marks
            code=code_files("tables", "figures"),
        output:
            [report_table("table4_dose_sweep", e) for e in ("csv", "md", "tex")],
            report_figure("fig_dose_sweep"),
            pdf=str(RP.figure("fig_dose_sweep", "pdf")),
        log:
            str(RP.log("dose_sweep")),
        params:
            root=results_root,
            rows=ROWS,
            doses=DOSES,
        conda:
            CONDA_ENV
        shell:
            "python -m ldct dose-sweep --root {params.root:q} --experiments {params.rows:q} "
            "--doses {params.doses} > {log:q} 2>&1"


rule paper:
    input:
        paper_outputs(),
