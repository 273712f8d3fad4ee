# Clinical image quality (synthetic data, `clinical.enabled`): lesion detectability, noise
# power spectrum and task-transfer function of every row, from scans made once for the test
# subjects (ldct/clinical.py). Real data has no noiseless truth and skips the section.

CLINICAL_REFERENCES = [LDCT, NDCT, NOISELESS]  # rows without a model: one job
CLINICAL_FLAGS = f"{SYNTHETIC_FLAGS} {section_flags('clinical', config['clinical'])}"
# the scans do not depend on the observer's settings: changing those remeasures, it does not rescan
SCAN_FLAGS = f"{SYNTHETIC_FLAGS} {section_flags('clinical', config['clinical'], exclude=('observer',))}"


rule clinical_scans:
    input:
        splits=str(RP.splits),
        phantoms=[str(RP.phantom(s) / f) for s in CLINICAL_SUBJECTS for f in ("phantom.nii.gz", "labels.nii.gz")],
        code=code_files("clinical"),
    output:
        scans=str(RP.clinical_scans),
        sites=str(RP.clinical_sites),
    log:
        str(RP.log("clinical/scans")),
    params:
        phantom=lambda wc, input: str(Path(input.phantoms[0]).parents[1]),
        settings=SCAN_FLAGS,
        seed=config["seed"],
    threads: 1  # like synthesize: one thread, so the scans do not depend on the thread count
    conda:
        CONDA_ENV
    shell:
        "python -m ldct clinical-scans --threads {threads} --phantom {params.phantom:q} --splits {input.splits:q} "
        "--seed {params.seed} {params.settings} --out {output.scans:q} --sites {output.sites:q} > {log:q} 2>&1"


rule clinical_measure:
    input:
        scans=str(RP.clinical_scans),
        sites=str(RP.clinical_sites),
        model=str(RP.model("{experiment}")),
        code=code_files("clinical"),
    output:
        str(RP.clinical("{experiment}")),
    log:
        str(RP.log("clinical/{experiment}")),
    params:
        settings=CLINICAL_FLAGS,
        seed=config["seed"],
        device=config["train"]["device"],
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS),
    threads: MAX_THREADS
    resources:
        gpu=1,
    conda:
        CONDA_ENV
    shell:
        "python -m ldct clinical-measure --threads {threads} --row {wildcards.experiment:q} --scans {input.scans:q} "
        "--sites {input.sites:q} --model {input.model:q} --seed {params.seed} {params.settings} --out {output:q} "
        "--device {params.device} > {log:q} 2>&1"


rule clinical_references:
    input:
        scans=str(RP.clinical_scans),
        sites=str(RP.clinical_sites),
        code=code_files("clinical"),
    output:
        [str(RP.clinical(r)) for r in CLINICAL_REFERENCES],
    log:
        str(RP.log("clinical/references")),
    params:
        rows=CLINICAL_REFERENCES,
        settings=CLINICAL_FLAGS,
        seed=config["seed"],
    conda:
        CONDA_ENV
    shell:
        "python -m ldct clinical-measure --row {params.rows:q} --scans {input.scans:q} --sites {input.sites:q} "
        "--seed {params.seed} {params.settings} --out {output:q} > {log:q} 2>&1"


rule clinical_report:
    input:
        rows=[str(RP.clinical(r)) for r in CLINICAL_ROWS],
        metrics=[str(RP.metrics(e)) for e in ROWS],
        training=str(RP.table("training")),
        code=code_files("clinical_report"),
    output:
        [report_table("table5_clinical", e) for e in ("csv", "md", "tex")],
        stats=report_csv("clinical_stats", "statistics", "Statistical tests"),
        figures=[report_figure(f) for f in CLINICAL_FIGURES],
        pdfs=[str(RP.figure(f, "pdf")) for f in CLINICAL_FIGURES],
    log:
        str(RP.log("clinical/report")),
    params:
        root=results_root,
        rows=CLINICAL_ROWS,
        seed=config["seed"],
        bootstrap=config["clinical"]["observer"]["bootstrap"],
    conda:
        CONDA_ENV
    shell:
        "python -m ldct clinical-report --root {params.root:q} --experiments {params.rows:q} --seed {params.seed} "
        "--bootstrap {params.bootstrap} > {log:q} 2>&1"
